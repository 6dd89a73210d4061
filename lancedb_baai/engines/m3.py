"""The bge-m3 engine: dense, sparse and ColBERT outputs from one forward pass per batch.

bge-m3 is one XLM-R encoder with two small heads saved beside its weights:
``colbert_linear.pt`` (one vector per token) and ``sparse_linear.pt`` (one weight per
token). Every function on the model (``local-baai`` for the dense vector,
``local-baai-m3-colbert``, the sparse column helper, :class:`~lancedb_baai.m3.BGEM3Reranker`)
shares this engine, and the engine keeps what it computed for the last texts it saw so
that a table with a dense and a ColBERT column runs the encoder once per batch, not once
per column. Semantics follow FlagEmbedding's ``BGEM3FlagModel``.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..runtimes.base import Graph, Session
from .base import unit_rows
from .embed import EmbeddingEngine

if TYPE_CHECKING:
    from .cache import EngineKey

Output = Literal["dense", "sparse", "colbert"]
OUTPUTS: tuple[Output, ...] = ("dense", "sparse", "colbert")

_COLBERT_CONSUMERS: set[str] = set()


def want_colbert_with_every_pass(model: str) -> None:
    """Note that a ColBERT column is filled from ``model`` (a cache model id) in this process.

    Its engine then computes ColBERT vectors with every pass, so that when a table's
    dense column is embedded before its ColBERT column, the second finds its vectors
    already made. Models nobody asked ColBERT vectors of do not pay for them.
    """
    _COLBERT_CONSUMERS.add(model)


@dataclass(frozen=True)
class M3Output:
    """What bge-m3 makes of a list of texts, row for row; an output not asked for is None.

    Attributes
    ----------
    dense : numpy.ndarray or None
        (n, dims) float32 CLS vectors, L2-normalised unless asked otherwise.
    sparse : list of dict or None
        Per text, ``{token_id: weight}`` of its non-special tokens with a positive weight
        (FlagEmbedding's ``lexical_weights``, with int keys).
    colbert : list of numpy.ndarray or None
        Per text, a (tokens, colbert_dims) float32 array of L2-normalised vectors, one per
        token after CLS (FlagEmbedding's ``colbert_vecs``).
    """

    dense: np.ndarray | None = None
    sparse: list[dict[int, float]] | None = None
    colbert: list[np.ndarray] | None = None

    def has(self, outputs: Collection[str]) -> bool:
        return all(getattr(self, name) is not None for name in outputs)

    def only(self, outputs: Collection[str]) -> M3Output:
        """The same result without the outputs not in ``outputs``."""
        return M3Output(**{name: getattr(self, name) if name in outputs else None for name in OUTPUTS})

    def rows(self, index: Sequence[int]) -> M3Output:
        """The result for the texts at ``index``, in that order."""
        index = list(index)
        return M3Output(
            dense=None if self.dense is None else self.dense[index],
            sparse=None if self.sparse is None else [self.sparse[i] for i in index],
            colbert=None if self.colbert is None else [self.colbert[i] for i in index],
        )


@dataclass
class _Memo:
    """Outputs of the last texts computed that no caller has taken yet."""

    rows: dict[str, int]
    result: M3Output


class BGEM3Engine(EmbeddingEngine):
    """bge-m3 on one device: ``encode`` gives the dense vectors, ``outputs`` any of the three.

    Its graph returns, per batch, the CLS vectors, each token's lexical weight and each
    token's ColBERT vector from one encoder pass.
    """

    def __init__(self, key: EngineKey, session: Session, graph: Graph) -> None:
        super().__init__(key, session, graph)
        self.colbert_dims = int(graph.extra["colbert_dims"])
        self._special_ids = np.array(sorted(graph.extra["special_ids"]), dtype=np.int64)
        self._memo: _Memo | None = None
        self._memo_lock = threading.Lock()

    def reset_after_fork(self) -> None:
        super().reset_after_fork()
        self._memo_lock = threading.Lock()
        self._memo = None

    def encode(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """The dense vectors of ``texts`` as an (n, dims) float32 array (CLS, as bge-m3 pools)."""
        return self.outputs(texts, ("dense",), normalize=normalize, batch_size=batch_size,
                            progress=progress).dense

    def outputs(self, texts: Sequence[str], want: Collection[Output], *, normalize: bool = True,
                batch_size: int = 32, progress: bool = False) -> M3Output:
        """The ``want`` outputs of ``texts``, from what the last pass left over or from a new pass.

        A new pass also keeps the dense vector (it is free: the CLS row) and the ColBERT
        vectors when a ColBERT column is filled from this model; what the caller did not
        ask for is kept, keyed by the texts, for the next caller to take.
        """
        texts, want = list(texts), set(want)
        unknown = want - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown bge-m3 outputs {sorted(unknown)}; use some of {list(OUTPUTS)}")
        result = self._take(texts, want)
        if result is None:
            extra = {"dense"} | ({"colbert"} if self.key.model in _COLBERT_CONSUMERS else set())
            result = self._compute(texts, want | extra, batch_size, progress)
            self._keep(texts, result, (want | extra) - want)
        result = result.only(want)
        if normalize and result.dense is not None:
            result = replace(result, dense=unit_rows(result.dense))
        return result

    def _take(self, texts: list[str], want: set[str]) -> M3Output | None:
        """The kept outputs for ``texts``, if all are there; an output wholly taken is dropped."""
        with self._memo_lock:
            memo = self._memo
            if memo is None or not memo.result.has(want) or any(t not in memo.rows for t in texts):
                return None
            found = memo.result.rows([memo.rows[t] for t in texts])
            if len(set(texts)) == len(memo.rows):
                left = [name for name in OUTPUTS if name not in want and getattr(memo.result, name) is not None]
                memo.result = memo.result.only(left)
                if not left:
                    self._memo = None
        return found

    def _keep(self, texts: list[str], result: M3Output, outputs: set[str]) -> None:
        """Keep ``outputs`` of ``result`` in place of what was kept before (if there is any to keep)."""
        if outputs and texts:
            memo = _Memo({t: i for i, t in enumerate(texts)}, result.only(outputs))
            with self._memo_lock:
                self._memo = memo

    def _compute(self, texts: list[str], want: set[str], batch_size: int, progress: bool) -> M3Output:
        """One runtime call per batch; every wanted output is read from the same pass."""
        n = len(texts)
        dense = np.empty((n, self.dims), dtype=np.float32)
        sparse: list[Any] | None = [None] * n if "sparse" in want else None
        colbert: list[Any] | None = [None] * n if "colbert" in want else None
        if n:
            for index, feeds, (cls, weights, vectors) in self._run(texts, batch_size, progress, "embedding"):
                dense[index] = cls
                mask = feeds["attention_mask"].astype(bool)
                if sparse is not None:
                    for i, row in zip(index, self._lexical_weights(weights, feeds["input_ids"], mask)):
                        sparse[i] = row
                if colbert is not None:
                    for i, row in zip(index, _colbert_vectors(vectors, mask)):
                        colbert[i] = row
        return M3Output(dense, sparse, colbert)

    def _lexical_weights(self, weights: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> list[dict[int, float]]:
        """relu(sparse_linear(h)) per token (from the graph), the largest per token id, special tokens left out."""
        rows = []
        for row_ids, row_weights, row_mask in zip(ids, weights, mask):
            keep = row_mask & (row_weights > 0) & ~np.isin(row_ids, self._special_ids)
            rows.append(_max_per_id(row_ids[keep], row_weights[keep]))
        return rows


def _colbert_vectors(vectors: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """colbert_linear(h) of every real token after CLS (from the graph), each vector L2-normalised."""
    vectors = unit_rows(vectors)
    return [np.ascontiguousarray(v[m]) for v, m in zip(vectors, mask[:, 1:])]


def _max_per_id(ids: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    if ids.size == 0:
        return {}
    unique, position = np.unique(ids, return_inverse=True)
    best = np.zeros(unique.size, dtype=np.float32)
    np.maximum.at(best, position, weights)
    return dict(zip(unique.tolist(), best.tolist()))
