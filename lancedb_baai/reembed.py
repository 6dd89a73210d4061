"""Re-embedding a table's column to a new model, and attaching a function to a plain table.

Both fill a new vector column with Lance's ``add_columns`` and a checkpointed batch UDF:
every finished batch is kept in a SQLite checkpoint file, so a run killed at any point
(``kill -9`` included) resumes where it stopped when the same call is made again, and the
new column appears in one commit when all batches are done. Readers keep searching the old
column meanwhile. A second commit then switches the table's embedding-function metadata:

- **re-embed**: the function entry moves from the old column to the new one (named
  ``<old>_<weights digest>``, or ``new_column=``), recording the new model's fingerprint;
  the old column stays as plain vectors, and ``table.restore(result["version_before"])``
  brings everything back (LanceDB's time travel);
- **attach**: the function is recorded for the new column, so ``table.add`` and search by
  text work in any process that imports this package.

Until the switch commit, the old column's function and fingerprint stay in force, so a
reader never searches new vectors with the old model or old vectors with the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import _fingerprint
from ._config import EmbedderConfig

logger = logging.getLogger(__name__)

__all__ = ["fill_missing", "reembed"]


def reembed(table: Any, function: EmbedderConfig, *, column: str | None = None, source: str | None = None,
            new_column: str | None = None, batch_size: int = 256, allow_dims_change: bool = False,
            checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Fill a new vector column of ``table`` with ``function`` and switch the table to it.

    Parameters
    ----------
    table : lancedb.table.LanceTable
        A local table.
    function : BAAIEmbeddings
        The function (model) the column gets from now on.
    column : str, optional
        The vector column to re-embed; default: the table's only embedding column. With
        ``source``, the name of the column to create (default "vector").
    source : str, optional
        Attach: the text column to embed, on a table that has no function for ``column``.
    new_column : str, optional
        Name of the re-embedded column (default ``<column>_<weights digest>``).
    batch_size : int, default 256
        Rows per checkpointed batch.
    allow_dims_change : bool, default False
        Allow a new model of another width (the old column is kept either way).
    checkpoint : path, optional
        Checkpoint file; default one per (table, column, model) in the temp directory, so
        calling again after a kill resumes.

    Returns
    -------
    dict
        ``status`` ("switched", "attached" or "unchanged"), ``column`` (the one searches
        by text now use), ``old_column``, ``rows``, ``version_before``, ``version_after``.
    """
    plan = _plan(table, function, column, source, new_column, allow_dims_change)
    if plan["status"] == "unchanged":
        logger.info("column %r was already made by %s: nothing to re-embed", plan["column"], function.name)
        return {**plan, "version_before": table.version, "version_after": table.version}
    version_before = table.version
    _fill(table, function, plan["source"], plan["column"], batch_size,
          Path(checkpoint) if checkpoint else _checkpoint_path(table, plan["column"], function))
    _switch(table, function, plan)
    logger.info("%s column %r of %d rows with %s (old column %r kept)", plan["status"], plan["column"],
                table.count_rows(), function.name, plan["old_column"])
    return {**plan, "rows": table.count_rows(), "version_before": version_before, "version_after": table.version}


def _plan(table: Any, function: EmbedderConfig, column: str | None, source: str | None,
          new_column: str | None, allow_dims_change: bool) -> dict[str, Any]:
    """What to do, or an error before anything is written."""
    if not isinstance(function, EmbedderConfig) or function.url:
        raise TypeError(f"reembed needs a local lancedb_baai embedding function (local-baai), not {function!r}")
    if function._semantics()["output"] != "dense":
        raise ValueError("reembed fills plain vector columns; ColBERT multi-vector columns are not supported yet "
                         "(fill them with lancedb_baai.fill_multivectors)")
    functions, names = table.embedding_functions, table.schema.names
    if source is not None:
        target = new_column or column or "vector"
        if source not in names:
            raise ValueError(f"source column {source!r} not found; columns are {names}. Pass source= a text column.")
        if target in names:
            raise ValueError(f"column {target!r} exists already; pass column= a new name for the vectors")
        return {"status": "attached", "column": target, "old_column": None, "source": source}
    if column is None:
        if len(functions) != 1:
            raise ValueError(f"the table has {len(functions)} embedding columns {sorted(functions)}; pass column=")
        column = next(iter(functions))
    if column not in functions:
        raise ValueError(f"column {column!r} has no embedding function (columns with one: {sorted(functions)}); "
                         "to attach one to a text column, pass source=")
    old = functions[column].function
    if not isinstance(old, EmbedderConfig):
        raise ValueError(f"column {column!r} was written by {type(old).__name__}, an embedding function of "
                         "another package; lancedb_baai re-embeds only columns it made")
    recorded = (old.stored_provenance() or {}).get("fingerprint")
    current = function.fingerprint()
    if recorded and not _fingerprint.differences(recorded, current):
        return {"status": "unchanged", "column": column, "old_column": column, "source": functions[column].source_column}
    if current["dims"] != table.schema.field(column).type.list_size and not allow_dims_change:
        raise ValueError(f"{function.name!r} makes {current['dims']}-d vectors but column {column!r} holds "
                         f"{table.schema.field(column).type.list_size}-d ones; pass allow_dims_change=True "
                         "(the new vectors go to a new column either way)")
    target = new_column or f"{column}_{current['weights'] or 'new'}"[:64]
    if target in names:
        raise ValueError(f"column {target!r} exists already; pass new_column= another name")
    return {"status": "switched", "column": target, "old_column": column,
            "source": functions[column].source_column}


def _checkpoint_path(table: Any, column: str, function: EmbedderConfig) -> Path:
    key = json.dumps([table.uri, column, function.fingerprint()], sort_keys=True, default=str)
    directory = Path(tempfile.gettempdir()) / "lancedb_baai-reembed"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sqlite"


def _fill(table: Any, function: EmbedderConfig, source: str, column: str, batch_size: int,
          checkpoint: Path) -> None:
    """Add ``column`` with ``function``'s vectors of ``source`` in one commit, resumable from ``checkpoint``."""
    import lance

    dims = function.ndims()
    field = pa.field(column, pa.list_(pa.float32(), dims))

    @lance.batch_udf(output_schema=pa.schema([field]), checkpoint_file=str(checkpoint))
    def embed(batch: pa.RecordBatch) -> pa.RecordBatch:
        vectors = _vectors(function, batch[source].to_pylist(), field.type)
        return pa.RecordBatch.from_arrays([vectors], schema=pa.schema([field]))

    table.to_lance().add_columns(embed, read_columns=[source], batch_size=batch_size)
    table.checkout_latest()


def _vectors(function: EmbedderConfig, texts: list[str | None], kind: pa.DataType) -> pa.Array:
    """``function``'s vectors of ``texts`` as an array of ``kind``; a null text gets a null vector."""
    import numpy as np

    present = [i for i, t in enumerate(texts) if t is not None]
    made = np.asarray(function.generate_embeddings([texts[i] for i in present]) if present else [],
                      dtype=np.float32).reshape(len(present), kind.list_size)
    if len(present) == len(texts):
        return pa.FixedSizeListArray.from_arrays(pa.array(made.ravel()), type=kind)
    rows: list[Any] = [None] * len(texts)
    for i, vector in zip(present, made):
        rows[i] = vector.tolist()
    return pa.array(rows, type=kind)


def _switch(table: Any, function: EmbedderConfig, plan: dict[str, Any]) -> None:
    """One commit: the function entry now names the new column and the new model's fingerprint.

    The other columns' entries are kept as stored (their fingerprints describe their vectors).
    """
    from lancedb.embeddings import EmbeddingFunctionConfig, get_registry

    stored = (table.schema.metadata or {}).get(b"embedding_functions")
    entries = [e for e in (json.loads(stored) if stored else []) if e["vector_column"] != plan["old_column"]]
    entries.append(get_registry().function_to_metadata(
        EmbeddingFunctionConfig(source_column=plan["source"], vector_column=plan["column"], function=function)))
    table.to_lance().update_schema_metadata({"embedding_functions": json.dumps(entries, indent=2)})
    table.checkout_latest()
    table.__dict__.pop("embedding_functions", None)  # LanceTable caches the parsed functions


def fill_missing(table: Any, *, key: str, column: str | None = None, batch_size: int = 256,
                 checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed the rows whose vector is null with the column's own function, in one commit.

    Such rows come from writes that skip the embedding function (``lance`` directly, an
    ``update`` or ``merge_insert`` of other columns, rows left for later). Vectors already
    present stay bit for bit. Batches are kept in a checkpoint directory until the final
    ``merge_insert`` on ``key``, so a killed run resumes; the column's drift guard applies.

    Parameters
    ----------
    table : lancedb.table.LanceTable
    key : str
        A column with a unique value per row, to write the vectors back by.
    column : str, optional
        The vector column; default the table's only embedding column.
    batch_size : int, default 256
    checkpoint : path, optional
        Directory for the finished batches; default one per (table, column, version).

    Returns
    -------
    dict
        ``status`` ("filled" or "complete"), ``column``, ``rows`` (filled), ``version_before``, ``version_after``.
    """
    functions = table.embedding_functions
    column = column or (next(iter(functions)) if len(functions) == 1 else None)
    if column not in functions:
        raise ValueError(f"pass column= one of the embedding columns {sorted(functions)}")
    conf, names = functions[column], table.schema.names
    if key not in names or conf.source_column not in names:
        missing = key if key not in names else conf.source_column
        raise ValueError(f"column {missing!r} not found; columns are {names}")
    version = table.version
    todo = table.to_lance().to_table(columns=[key, conf.source_column],
                                     filter=f"{column} IS NULL AND {conf.source_column} IS NOT NULL").sort_by(key)
    if todo.num_rows == 0:
        return {"status": "complete", "column": column, "rows": 0, "version_before": version, "version_after": version}
    directory = Path(checkpoint) if checkpoint else _checkpoint_path(table, f"{column}@{version}", conf.function)
    directory = directory.with_suffix(".fill")
    directory.mkdir(parents=True, exist_ok=True)
    kind = table.schema.field(column).type
    parts = [_filled_batch(directory / f"{i:06d}.arrow", todo.slice(start, batch_size), key,
                           conf.source_column, column, conf.function, kind)
             for i, start in enumerate(range(0, todo.num_rows, batch_size))]
    updates = pa.concat_tables(parts)
    table.to_lance().merge_insert(key).when_matched_update_all().execute(updates)
    table.checkout_latest()
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    return {"status": "filled", "column": column, "rows": updates.num_rows, "version_before": version,
            "version_after": table.version}


def _filled_batch(part: Path, rows: pa.Table, key: str, source: str, column: str, function: Any,
                  kind: pa.DataType) -> pa.Table:
    """One batch of (key, vector), from its checkpoint file if a previous run finished it."""
    import pyarrow.feather as feather

    if part.exists():
        return feather.read_table(part)
    batch = pa.table({key: rows[key], column: _vectors(function, rows[source].to_pylist(), kind)})
    scratch = part.with_suffix(".tmp")
    feather.write_feather(batch, scratch)
    scratch.replace(part)  # a kill leaves either no file or a whole one
    return batch
