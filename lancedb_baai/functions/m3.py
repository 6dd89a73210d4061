"""bge-m3 in LanceDB: dense, sparse and ColBERT vectors of one model, from one forward pass.

- ``local-baai`` on a bge-m3 model fills a plain vector column with the dense vector.
- ``local-baai-m3-colbert`` (:class:`BGEM3ColbertEmbeddings`) fills a
  ``lancedb.pydantic.MultiVector`` column with one vector per token and embeds queries
  for LanceDB's multi-vector (MaxSim) search.
- :func:`sparse_column` gives the lexical weights as a column for ``table.add``.
- :class:`BGEM3Reranker` rescores search results with M3's weighted dense + sparse +
  ColBERT score.

All of them, on the same model and engine options, share one engine per process, and
the engine hands the outputs it computed for the last texts to the next function that
asks, so filling two columns from one text column runs the encoder once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from lancedb.embeddings import TextEmbeddingFunction, register
from pydantic import field_validator

from ..engines import kinds, progress as _progress
from ..engines.m3 import BGEM3Engine, M3Output, Output, want_colbert_with_every_pass
from ..models import catalog as _catalog, hub as _hub
from ..runtimes.torch_modules import colbert_dims_from_file
from .arrow import multivector_array
from .config import EmbedderConfig, EngineConfig
from .inputs import NoRetry, check_queries, check_query, check_texts
from .reranker import BAAIReranker, ReturnScore, check_options, model_name_option

__all__ = ["BGEM3ColbertEmbeddings", "BGEM3Embeddings", "BGEM3Reranker", "M3Output", "SPARSE_TYPE",
           "colbert_column", "fill_multivectors", "sparse_column"]

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)
"""Weights of the dense, sparse and ColBERT scores in :meth:`BGEM3Embeddings.score`."""

SPARSE_TYPE = pa.list_(pa.struct([pa.field("token_id", pa.int32()), pa.field("weight", pa.float32())]))
"""Arrow type of a sparse column: per row, the (token_id, weight) pairs sorted by token id."""


class _M3Config(EmbedderConfig):
    """Engine options of a bge-m3 model; every subclass is served by the same "m3" engine."""

    engine_kind = "m3"
    name: str = "BAAI/bge-m3"

    @field_validator("url")
    @classmethod
    def _no_url(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("url= is not supported by the bge-m3 functions: `lancedb-baai serve` serves "
                             "dense embeddings and reranking; run bge-m3 in this process (drop url=)")
        return value


def _outputs_of(function: EngineConfig, texts: Sequence[str], want: set[Output]) -> M3Output:
    """The ``want`` outputs of ``texts`` from the bge-m3 engine ``function`` is configured for."""
    texts = check_texts(texts)
    engine = _engine_of(function)
    progress = _progress.wanted(function.show_progress, len(texts))
    return engine.outputs(texts, want, batch_size=function.batch_size, progress=progress)


def _engine_of(function: EngineConfig) -> BGEM3Engine:
    engine = function.engine()
    if not isinstance(engine, BGEM3Engine):
        raise ValueError(
            f"{function.name!r} is not a bge-m3 model (no colbert_linear.pt and sparse_linear.pt "
            "beside its weights), so it has no sparse or ColBERT outputs. Pass a function "
            "configured with 'BAAI/bge-m3' or a directory holding a bge-m3 snapshot."
        )
    return engine


@kinds.function_of("m3")
class BGEM3Embeddings(_M3Config):
    """bge-m3 as one model with three outputs, and M3's combined relevance score.

    It is the configuration ``lifecycle.preload(name, kind="m3")`` loads, and what
    :class:`BGEM3Reranker` scores with. Like every function here it is configuration
    only: copies and pickles share the process's one engine.

    Parameters
    ----------
    name : str, default "BAAI/bge-m3"
        Hub id or local directory of a bge-m3 snapshot (encoder + colbert_linear.pt + sparse_linear.pt).
    weights : tuple of 3 floats, default (0.4, 0.2, 0.4)
        Weights of the dense, sparse and ColBERT scores in :meth:`score`; the score is
        their weighted mean, as FlagEmbedding's ``compute_score(...)["colbert+sparse+dense"]``.
    device, dtype, batch_size, max_length, revision, trust_remote_code, show_progress
        Engine options, as for ``local-baai``. ``max_length`` None is the model's own (8192).
    """

    weights: tuple[float, float, float] = DEFAULT_WEIGHTS

    @field_validator("weights")
    @classmethod
    def _valid_weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0 or sum(value) <= 0:
            raise ValueError(f"weights {value} must be three non-negative numbers (dense, sparse, "
                             "ColBERT) with a positive sum, e.g. (0.4, 0.2, 0.4)")
        return value

    def semantics(self) -> dict:
        return {"pooling": "cls", "output": "dense", "normalize": True, "query_instruction": ""}

    def ndims(self) -> int:
        """Width of the dense vector, from the catalog or the config files (no weights loaded)."""
        return _catalog.vector_dims(self.name, self.revision)

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False,
               colbert: bool = False) -> M3Output:
        """The chosen outputs of ``texts`` (dense L2-normalised), from one forward pass per batch."""
        want = {name for name, on in (("dense", dense), ("sparse", sparse), ("colbert", colbert)) if on}
        if not want:
            raise ValueError("nothing to compute: pass dense=True, sparse=True and/or colbert=True")
        return _outputs_of(self, texts, want)

    def score_modes(self, query: str, passages: Sequence[str]) -> dict[str, list[float]]:
        """Each passage's scores against ``query``, under FlagEmbedding's ``compute_score`` keys.

        "dense" (cosine of the dense vectors), "sparse" (lexical matching: sum over shared
        tokens of the product of weights), "colbert" (mean over query tokens of the best
        dot product with a passage token), and the weighted means "sparse+dense" and
        "colbert+sparse+dense" under :attr:`weights`.
        """
        check_query(query)
        passages = check_texts(passages, "passage")
        if not passages:
            return {key: [] for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")}
        out = _outputs_of(self, [query, *passages], {"dense", "sparse", "colbert"})
        dense = out.dense[1:] @ out.dense[0]
        sparse = np.array([lexical_score(out.sparse[0], row) for row in out.sparse[1:]])
        colbert = np.array([maxsim_score(out.colbert[0], row) for row in out.colbert[1:]])
        w_dense, w_sparse, w_colbert = self.weights
        modes = {
            "dense": dense, "sparse": sparse, "colbert": colbert,
            "sparse+dense": (w_sparse * sparse + w_dense * dense) / max(w_sparse + w_dense, 1e-12),
            "colbert+sparse+dense": (w_dense * dense + w_sparse * sparse + w_colbert * colbert)
            / sum(self.weights),
        }
        return {key: np.asarray(value, dtype=np.float32).tolist() for key, value in modes.items()}

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """M3's combined relevance of each passage to ``query``: the weighted mean of its three scores."""
        return self.score_modes(query, passages)["colbert+sparse+dense"]


def lexical_score(query: dict[int, float], passage: dict[int, float]) -> float:
    """bge-m3's sparse score: the sum over shared tokens of query weight times passage weight."""
    if len(passage) < len(query):
        query, passage = passage, query
    return float(sum(weight * passage[token] for token, weight in query.items() if token in passage))


def maxsim_score(query: np.ndarray, passage: np.ndarray) -> float:
    """ColBERT late interaction: the mean over query vectors of the best dot product with the passage."""
    return float((query @ passage.T).max(axis=1).mean())


@register("local-baai-m3-colbert")
class BGEM3ColbertEmbeddings(NoRetry, _M3Config, TextEmbeddingFunction):
    """bge-m3's ColBERT vectors for a ``lancedb.pydantic.MultiVector(ndims)`` column.

    Each text becomes one L2-normalised vector per token (after CLS), and a query the same
    way, so ``table.search(text, vector_column_name=...)`` ranks by LanceDB's MaxSim.
    Give the column a plain-vector sibling filled by ``local-baai`` on the same model:
    both come out of one forward pass. Parameters are the engine options of
    :class:`BGEM3Embeddings`.

    LanceDB 0.40 drops multi-vectors that it computes itself during ``table.add``;
    fill the column with :func:`fill_multivectors` until that is fixed.

    Examples
    --------
    >>> from lancedb.embeddings import get_registry
    >>> colbert = get_registry().get("local-baai-m3-colbert").create(name="BAAI/bge-m3")  # doctest: +SKIP
    """

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        want_colbert_with_every_pass(_hub.model_id(self.name))

    def semantics(self) -> dict:
        return {"pooling": "cls", "output": "colbert", "normalize": True, "query_instruction": ""}

    def _dims_of(self, engine: Any) -> int:
        return int(engine.colbert_dims)

    def ndims(self) -> int:
        """Width of one ColBERT vector, from the catalog or colbert_linear.pt (the encoder is not loaded)."""
        return _colbert_dims(self.name, self.revision)

    def compute_query_embeddings(self, query: str, *args, **kwargs) -> list[list[np.ndarray]]:
        """A query's token vectors, for multi-vector search (bge-m3 uses no query instruction)."""
        queries = check_queries(query)
        return self.generate_embeddings(queries)

    def generate_embeddings(self, texts: Sequence[str], *args, **kwargs) -> list[list[np.ndarray]]:
        """Per text, its list of token vectors (the form LanceDB stores in a multi-vector column)."""
        want_colbert_with_every_pass(_hub.model_id(self.name))
        return [list(matrix) for matrix in _outputs_of(self, texts, {"colbert"}).colbert]


@functools.lru_cache(maxsize=256)
def _colbert_dims(name: str, revision: str | None) -> int:
    spec = None if _hub.is_local(name) else _catalog.lookup(name)
    if spec is not None and _catalog.is_m3(name) and spec.dims is not None:
        return spec.dims  # bge-m3's ColBERT head keeps the encoder's width
    path = _hub.cached_dir(name, revision)
    if path is None:
        raise ValueError(
            f"cannot tell the ColBERT vector width of {name!r}: its files are not available "
            "locally. Download it first or pass a local bge-m3 directory."
        )
    return colbert_dims_from_file(path)


def colbert_column(texts: Sequence[str], function: EngineConfig) -> pa.Array:
    """The ColBERT vectors of ``texts`` as a ``list<fixed_size_list<float32, dims>>`` array.

    ``function`` is any configuration on a bge-m3 model (usually the column's
    ``local-baai-m3-colbert`` function). The dense and, if asked for before, sparse
    outputs of the same pass are kept for the next function that embeds these texts.
    """
    vectors = _outputs_of(function, texts, {"colbert"}).colbert
    dims = vectors[0].shape[1] if vectors else _engine_of(function).colbert_dims
    return multivector_array(vectors, dims)


def sparse_column(texts: Sequence[str], function: EngineConfig) -> pa.Array:
    """bge-m3's lexical weights of ``texts`` as a column of :data:`SPARSE_TYPE` for ``table.add``.

    Per row, the non-special tokens with a positive weight as ``{"token_id", "weight"}``
    structs sorted by token id. ``function`` is any configuration on a bge-m3 model; the
    dense (and ColBERT) outputs of the same pass are kept for the functions of the table
    the column goes into, so adding it costs no extra forward pass.
    """
    weights = _outputs_of(function, texts, {"sparse"}).sparse
    offsets = np.zeros(len(weights) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in weights], out=offsets[1:])
    ids = np.fromiter((t for row in weights for t in sorted(row)), dtype=np.int32, count=int(offsets[-1]))
    values = np.fromiter((row[t] for row in weights for t in sorted(row)), dtype=np.float32,
                         count=int(offsets[-1]))
    pairs = pa.StructArray.from_arrays([pa.array(ids), pa.array(values)], fields=list(SPARSE_TYPE.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets), pairs, type=SPARSE_TYPE)


def fill_multivectors(table: Any, data: Any) -> pa.Table:
    """``data`` with every ``local-baai-m3-colbert`` column of ``table`` computed, for ``table.add``.

    LanceDB 0.40 computes embedding columns itself during ``table.add`` but replaces any
    multi-vector whose token count differs from the vector width with null. This fills
    those columns first, from the same forward pass the table's dense column then reuses:
    ``table.add(fill_multivectors(table, rows))``. Columns already in ``data`` (not all
    null) are kept as given.

    Parameters
    ----------
    table : lancedb.table.Table
        The table the rows go into; its embedding functions say which columns to fill.
    data : pyarrow.Table, pyarrow.RecordBatch, list of dict or pandas.DataFrame
        The rows, with their source text column.
    """
    data = _as_arrow(data)
    check_declared_functions(table)
    for column, conf in table.embedding_functions.items():
        if not isinstance(conf.function, BGEM3ColbertEmbeddings):
            continue
        check_multivector_field(table.schema.field(column), conf.function)
        given = column in data.column_names and data[column].null_count < data.num_rows
        if given:
            continue
        if conf.source_column not in data.column_names:
            raise ValueError(f"column {conf.source_column!r} (the source of {column!r}) not found in "
                             f"the data; columns are {data.column_names}. Add it to the rows.")
        texts = check_texts(data[conf.source_column].to_pylist(), conf.source_column)
        array = colbert_column(texts, conf.function)
        if column in data.column_names:
            data = data.drop_columns([column])
        data = data.append_column(pa.field(column, array.type), array)
    return data


def check_declared_functions(table: Any) -> None:
    """Refuse a table whose multi-vector column LanceDB dropped from its embedding functions.

    A ``LanceModel`` that declares two ``VectorField``s on one ``SourceField`` (dense and
    ColBERT from one text column) keeps only the function whose ``SourceField`` was used;
    the other column would silently stay empty and fail at search time.
    """
    functions = table.embedding_functions
    ours = [conf for conf in functions.values() if isinstance(conf.function, EngineConfig)]
    orphans = [f.name for f in table.schema if f.name not in functions and _is_multivector(f.type)]
    if not ours or not orphans:
        return
    source, function = ours[0].source_column, ours[0].function
    raise ValueError(
        f"column {orphans[0]!r} holds multi-vectors but has no embedding function: LanceDB keeps one "
        f"function per SourceField, so a second VectorField on {source!r} is dropped. Declare both "
        "with EmbeddingFunctionConfig instead:\n"
        f"  colbert = get_registry().get('local-baai-m3-colbert').create(name={function.name!r})\n"
        "  db.create_table(..., schema=Doc, embedding_functions=[\n"
        f"      EmbeddingFunctionConfig(source_column={source!r}, vector_column={ours[0].vector_column!r}, "
        "function=dense),\n"
        f"      EmbeddingFunctionConfig(source_column={source!r}, vector_column={orphans[0]!r}, function=colbert)])"
    )


def _is_multivector(kind: pa.DataType) -> bool:
    inner = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
    return inner is not None and pa.types.is_fixed_size_list(inner)


def check_multivector_field(field: pa.Field, function: BGEM3ColbertEmbeddings) -> None:
    """Refuse a column that cannot hold ``function``'s vectors, saying how to declare it."""
    dims = function.ndims()
    kind = field.type
    inner = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
    if inner is not None and pa.types.is_fixed_size_list(inner) and inner.list_size == dims \
            and pa.types.is_floating(inner.value_type):
        return
    plain = pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)
    what = "a plain vector column" if plain else "not a multi-vector column"
    raise ValueError(
        f"column {field.name!r} ({kind}) is {what}, but 'local-baai-m3-colbert' ({function.name}) makes "
        f"one {dims}-d vector per token. Declare it as lancedb.pydantic.MultiVector({dims}) "
        f"(list<fixed_size_list<float, {dims}>>), and fill plain vector columns with 'local-baai'."
    )


def _as_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, list):
        return pa.Table.from_pylist([row.model_dump() if hasattr(row, "model_dump") else row for row in data])
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"cannot read rows from a {type(data).__name__}; pass a pyarrow Table, a list of "
                    "dicts or a pandas DataFrame")


class BGEM3Reranker(BAAIReranker):
    """Rerank LanceDB vector, full-text, hybrid and multi-vector results with bge-m3's combined score.

    Each result's text is scored against the query by the weighted mean of M3's dense,
    sparse and ColBERT scores (FlagEmbedding's ``compute_score(...)["colbert+sparse+dense"]``),
    written as a float32 ``_relevance_score`` column, highest first. The result-table
    contract is :class:`~lancedb_baai.BAAIReranker`'s: ``return_score="relevance"`` drops
    the search's own score columns, ``"all"`` keeps them; rows with a null text come last.

    Parameters
    ----------
    model_name : str, default "BAAI/bge-m3"
        Hub id or local directory of a bge-m3 snapshot; ``name=`` means the same.
    column : str, default "text"
        The result column that holds the passage text.
    return_score : {"relevance", "all"}, default "relevance"
    weights : tuple of 3 floats, default (0.4, 0.2, 0.4)
        Weights of the dense, sparse and ColBERT scores.
    function : BGEM3Embeddings, optional
        An existing configuration to use instead of ``model_name``, ``weights`` and ``options``.
    **options
        Engine options (device, dtype, batch_size, max_length, ...).
    """

    def __init__(self, model_name: str | None = None, column: str = "text",
                 return_score: ReturnScore = "relevance", *,
                 weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
                 function: BGEM3Embeddings | None = None, **options: Any) -> None:
        if function is None:
            check_options(type(self), BGEM3Embeddings, options)
            name = model_name_option(model_name, options, "BAAI/bge-m3")
            function = BGEM3Embeddings(name=name, weights=weights, **options)
        super().__init__(column=column, return_score=return_score, function=function)

    def __repr__(self) -> str:
        return super().__repr__().replace("BAAIReranker(", f"{type(self).__name__}(", 1)

    __str__ = __repr__
