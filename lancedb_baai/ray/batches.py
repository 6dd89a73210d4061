"""Ray Data batch classes: one cached engine per actor, Arrow in, Arrow out.

Two callable classes plug into ``Dataset.map_batches(..., batch_format="pyarrow")`` on an
actor pool: :class:`BAAIEmbedBatches` appends a vector column, :class:`BAAIRerankBatches`
appends a score column. Each actor loads its model once, from this package's per-process
engine cache, when Ray constructs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engines.cache import CACHE
from ..functions.arrow import vector_array
from ..functions.config import EngineConfig
from ..functions.embeddings import BAAIEmbeddings
from ..functions.reranker import BAAIRerankFunction
from ..runtimes.streams import throughput_by_default
from ..tables.actors import actor_id

DEBUG_COLUMNS: tuple[str, ...] = ("baai_actor", "baai_pid", "baai_load_count")
"""Columns a ``debug=True`` batch class appends: Ray actor id, process id, model loads in that process."""


class BadRowError(ValueError):
    """A row the model cannot take (null, not a string), named by its column and row."""


class _BatchFunction:
    """What both batch classes share: a configuration, its engine loaded at construction, debug columns."""

    registry_name: ClassVar[str]
    config_class: ClassVar[type[EngineConfig]]

    def __init__(self, function: EngineConfig | Mapping[str, Any], debug: bool = False) -> None:
        self.function = as_function(function, self.registry_name, self.config_class)
        self.debug = debug
        # Ray builds the class once per actor: load here, so batches only ever hit the cache.
        throughput_by_default()
        self.function.engine()

    def cache_info(self) -> list[dict[str, Any]]:
        """This process's ``lancedb_baai.cache_info()`` records (call it on a Ray actor handle)."""
        return CACHE.info()

    def _finish(self, batch: pa.Table) -> pa.Table:
        if not self.debug:
            return batch
        rows = batch.num_rows
        values = (actor_id(), os.getpid(), CACHE.total_loads())
        types = (pa.string(), pa.int64(), pa.int64())
        for name, value, kind in zip(DEBUG_COLUMNS, values, types):
            batch = batch.append_column(name, pa.repeat(pa.scalar(value, kind), rows))
        return batch


class BAAIEmbedBatches(_BatchFunction):
    """Append a ``local-baai`` vector column to Arrow batches; for ``Dataset.map_batches`` actor pools.

    Parameters
    ----------
    function : BAAIEmbeddings or dict
        The embedding configuration, or its ``model_dump()`` / ``create()`` arguments.
    text_column : str, default "text"
        The string column to embed (as passages: no query instruction).
    vector_column : str, default "vector"
        The ``fixed_size_list<float32>[dims]`` column appended to each batch.
    debug : bool, default False
        Also append :data:`DEBUG_COLUMNS`, so loads per actor can be counted from the output.

    Examples
    --------
    >>> ds.map_batches(BAAIEmbedBatches, fn_constructor_kwargs={"function": fn},  # doctest: +SKIP
    ...                batch_format="pyarrow", batch_size=256, concurrency=2,
    ...                **actor_options(fn, concurrency=2))
    """

    registry_name = "local-baai"
    config_class = BAAIEmbeddings

    def __init__(self, function: BAAIEmbeddings | Mapping[str, Any], text_column: str = "text",
                 vector_column: str = "vector", debug: bool = False) -> None:
        super().__init__(function, debug)
        self.text_column = text_column
        self.vector_column = vector_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = string_column(batch, self.text_column).to_pylist()
        function = self.function
        matrix = function.engine().encode(texts, normalize=function.normalize,
                                          batch_size=function.batch_size)
        vectors = vector_array(matrix)
        return self._finish(batch.append_column(pa.field(self.vector_column, vectors.type), vectors))


class BAAIRerankBatches(_BatchFunction):
    """Append a ``local-baai-rerank`` score column to Arrow batches of (query, passage) pairs.

    Rows that share a query are scored together; scores are FlagReranker's (raw logits,
    or their sigmoid with the function's ``normalize=True``), as float32.

    Parameters
    ----------
    function : BAAIRerankFunction or dict
        The reranker configuration, or its ``model_dump()`` / ``create()`` arguments.
    query_column, passage_column : str
        String columns holding each pair's query and passage.
    score_column : str, default "score"
        The float32 column appended to each batch.
    debug : bool, default False
        Also append :data:`DEBUG_COLUMNS`.
    """

    registry_name = "local-baai-rerank"
    config_class = BAAIRerankFunction

    def __init__(self, function: BAAIRerankFunction | Mapping[str, Any], query_column: str = "query",
                 passage_column: str = "passage", score_column: str = "score",
                 debug: bool = False) -> None:
        super().__init__(function, debug)
        self.query_column = query_column
        self.passage_column = passage_column
        self.score_column = score_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        queries = string_column(batch, self.query_column, allow_blank=False)
        passages = string_column(batch, self.passage_column)
        encoded = pc.dictionary_encode(queries.combine_chunks())
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        scores = np.empty(batch.num_rows, dtype=np.float32)
        for code, query in enumerate(encoded.dictionary.to_pylist()):
            rows = np.flatnonzero(codes == code)
            scores[rows] = self.function.score(query, passages.take(pa.array(rows)).to_pylist())
        column = pa.array(scores, type=pa.float32())
        return self._finish(batch.append_column(pa.field(self.score_column, pa.float32()), column))


def as_function(function: Any, registry_name: str, config_class: type[EngineConfig]) -> Any:
    """A function configuration as given, or made from its dict through LanceDB's registry."""
    if isinstance(function, config_class):
        return function
    if isinstance(function, Mapping):
        from lancedb.embeddings import get_registry

        return get_registry().get(registry_name).create(**function)
    raise TypeError(
        f"function must be a {registry_name!r} configuration ({config_class.__name__} or the dict "
        f"of its arguments), got {type(function).__name__}"
    )


def string_column(batch: pa.Table, column: str, allow_blank: bool = True) -> pa.ChunkedArray:
    """The batch's ``column`` if every row holds a string, else an error naming the column and row."""
    if column not in batch.column_names:
        raise ValueError(f"column {column!r} not found in the batch; columns are {batch.column_names}. "
                         f"Pass the name of the text column.")
    values = batch.column(column)
    if not is_string_type(values.type):
        raise BadRowError(
            f"column {column!r} holds {values.type} values, not strings (row 0 is "
            f"{_row(batch, 0)}). bge models take text only: cast or convert the column first."
        )
    bad = pc.is_null(values)
    problem = "is null"
    if not allow_blank and not values.null_count:
        bad, problem = pc.equal(pc.utf8_trim_whitespace(values), ""), "is blank"
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise BadRowError(
            f"column {column!r} {problem} at row {row} of a {batch.num_rows}-row batch "
            f"({_row(batch, row)}). bge models take non-empty strings only: fill or drop such rows."
        )
    return values


def is_string_type(kind: pa.DataType) -> bool:
    checks = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", None))
    return any(check is not None and check(kind) for check in checks)


def _row(batch: pa.Table, row: int, width: int = 60) -> str:
    """One row's values, shortened, so the user can find it in the source."""
    if batch.num_rows == 0:
        return "empty batch"
    values = {name: batch.column(name)[row].as_py() for name in batch.column_names}
    return ", ".join(f"{name}={_short(value, width)}" for name, value in values.items())


def _short(value: Any, width: int) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
