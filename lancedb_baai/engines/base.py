"""What every engine does whatever its kind and runtime: tokenize, plan batches, pad, call the runtime.

An engine is built over a runtime's :class:`~lancedb_baai.runtimes.base.Session` and its
:class:`~lancedb_baai.runtimes.base.Graph`. It holds the model's fast tokenizer (truncating
at the configured ``max_length``), sorts inputs by length into batches bounded by a token
budget, pads each batch into int64 arrays and hands them to the runtime, which never sees
text. Pooling is in the graph; normalisation and the sigmoid are applied here, once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..runtimes.base import Graph, Session, pad
from . import progress as _progress
from .batching import pass_cost, plan_batches

if TYPE_CHECKING:
    from .cache import EngineKey

CALIBRATION_BATCH = 8


def _tokenizer(graph: Graph, max_length: int | None, strategy: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(graph.tokenizer)
    if max_length is not None:
        tokenizer.enable_truncation(max_length, strategy=strategy)
    return tokenizer


class Engine:
    """Texts to padded batches to runtime outputs, in the caller's order; counters and fork reset."""

    truncation: ClassVar[str] = "longest_first"

    def __init__(self, key: EngineKey, session: Session, graph: Graph) -> None:
        self.key, self.session, self.graph = key, session, graph
        self.max_length = int(key.max_length or graph.max_length)
        self.tokenizer = _tokenizer(graph, self.max_length, self.truncation)
        self._counter = _tokenizer(graph, None, self.truncation)  # no truncation: true lengths
        self.forward_passes = 0
        self._lock = threading.Lock()  # the tokenizers are not safe to call from several threads at once

    @property
    def dims(self) -> int:
        return self.graph.dims

    def reset_after_fork(self) -> None:
        """Make the engine usable in a forked child: a fresh lock, fresh counters, a session fit for it."""
        self._lock = threading.Lock()
        self.forward_passes = 0
        self.session.after_fork()

    def token_counts(self, texts: Sequence[str], pair_with: Sequence[str] | None = None) -> list[int]:
        """Tokens per input before truncation (special tokens included; pairs: ``pair_with[i]``, text i).

        What a server needs to fill a token budget and to refuse inputs over ``max_length``.
        """
        if not texts:
            return []
        batch = list(zip(pair_with, texts)) if pair_with is not None else list(texts)
        with self._lock:
            encoded = self._counter.encode_batch(batch)
        return [len(e.ids) for e in encoded]

    def _encode(self, batch: list) -> list[Any]:
        with self._lock:
            return self.tokenizer.encode_batch(batch)

    def _run(self, items: list, batch_size: int, progress: bool, desc: str
             ) -> Iterator[tuple[list[int], dict[str, np.ndarray], tuple[np.ndarray, ...]]]:
        """Yield (indices, padded feeds, runtime outputs) per batch, longest first; indices restore order."""
        encodings = self._encode(items)
        lengths = [len(e.ids) for e in encodings]
        plan = list(plan_batches(lengths, batch_size, pass_tokens=pass_cost(self.key.device)))
        padded: list[dict[str, np.ndarray] | None] = [None] * len(plan)

        def batches() -> Iterator[dict[str, np.ndarray]]:  # padded when the runtime asks: the next while one runs
            for number, index in enumerate(plan):
                padded[number] = pad([encodings[i] for i in index], self.graph.inputs, self.graph.pad_id)
                self.forward_passes += 1
                yield padded[number]

        with _progress.bar(progress, len(lengths), desc) as bar:
            for number, outputs in enumerate(self.session.run_many(batches())):
                feeds, padded[number] = padded[number], None  # the engine's last reference: freed after use
                yield plan[number], feeds, outputs
                if bar is not None:
                    bar.update(len(plan[number]))

    @classmethod
    def calibration_items(cls, texts: list[str]) -> list:
        """What int8 calibration feeds the graph, made of ``texts`` (pairs for a cross-encoder)."""
        return texts

    @classmethod
    def calibration_feeds(cls, graph: Graph, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """Padded batches of calibration ``texts`` as this kind's graph takes them."""
        tokenizer = _tokenizer(graph, graph.max_length, cls.truncation)
        items = cls.calibration_items(texts)
        return [pad(tokenizer.encode_batch(items[start:start + CALIBRATION_BATCH]), graph.inputs, graph.pad_id)
                for start in range(0, len(items), CALIBRATION_BATCH)]


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as ``torch.nn.functional.normalize`` does: x / max(|x|, 1e-12)."""
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
