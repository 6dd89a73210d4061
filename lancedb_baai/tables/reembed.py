"""Changing the model behind a table's vector column, attaching a function to a plain table, filling gaps.

:func:`reembed` puts a new model's vectors under the column's own name in one Lance commit
(:mod:`._switch`): until then readers search the old vectors with the old model, from then
on the new ones with the new model, and plain ``table.search("text")`` works throughout.
The vectors it replaces are kept, bit for bit, in a ``list<float32>`` column
``<column>__<old weights digest>`` (LanceDB does not take that type for a vector column), so
:func:`rollback_reembed` can switch back without embedding again; ``drop_old=True`` keeps
none. Every batch is checkpointed: killed at any point (``kill -9`` included), the same
call resumes where it stopped. ``table.restore(result["version_before"])`` also goes back.
A vector index on the replaced column indexed the old vectors and does not carry over.

Attach (``source=``) fills a new vector column the same way and records the function, so
``table.add`` and search by text work in any process that imports this package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..models import fingerprint as _fingerprint
from ..engines import progress as _progress
from .checkpoint import Checkpoint
from ..functions.config import METADATA_KEY, EmbedderConfig
from .switch import KEPT_KEY, Plan, chunks, commit, embed_chunk, embedded_array, write_fragments

logger = logging.getLogger(__name__)

__all__ = ["drop_kept", "fill_missing", "reembed", "rollback_reembed"]

_ATTEMPTS = 3
"""Runs of one :func:`reembed` call when other writers commit meanwhile (each run keeps what it finished)."""


def reembed(table: Any, function: EmbedderConfig, *, column: str | None = None, source: str | None = None,
            batch_size: int = 256, allow_dims_change: bool = False, drop_old: bool = False,
            checkpoint: str | Path | None = None, ray_actors: int | None = None) -> dict[str, Any]:
    """Put ``function``'s vectors under ``table``'s vector column, in one commit; or attach it to a text column.

    Parameters
    ----------
    table : lancedb.table.LanceTable
        A local table, opened at its latest version.
    function : BAAIEmbeddings
        The function (model) the column gets from now on.
    column : str, optional
        The vector column; default: the table's only embedding column. With ``source``, the
        column to create (default "vector").
    source : str, optional
        Attach: the text column to embed, on a table that has no function for ``column``.
    batch_size : int, default 256
        Rows per checkpointed chunk.
    allow_dims_change : bool, default False
        Allow a new model of another width.
    drop_old : bool, default False
        Keep no old vectors: the replaced ones are not kept, and columns kept by earlier
        switches of this column are dropped (no :func:`rollback_reembed` after that).
    checkpoint : path, optional
        Checkpoint directory; default one per (table, column, model) in the temp directory,
        so calling again after a kill resumes.
    ray_actors : int, optional
        Embed on this many Ray actors (:mod:`lancedb_baai.ray`) instead of in this process;
        resume works the same way.

    Returns
    -------
    dict
        ``status`` ("switched", "attached" or "unchanged"), ``column`` (the one searches by
        text use), ``kept_column`` (the old vectors, or None), ``rows``, ``embedded`` (texts
        embedded by this call), ``dropped``, ``version_before``, ``version_after``. A writer
        that commits meanwhile makes Lance refuse the switch commit; the call then runs again
        on the new version (up to 3 times), embedding only rows of changed or new fragments.
    """
    from lance.commit import CommitConflictError

    attempt = 1
    while True:
        try:
            return _reembed_once(table, function, column, source, batch_size, allow_dims_change, drop_old,
                                 checkpoint, ray_actors)
        except CommitConflictError:
            if attempt == _ATTEMPTS:
                raise
            attempt += 1
            logger.info("another writer committed during the re-embed: again on the new version, with the "
                        "chunks of unchanged fragments taken from the checkpoint")
            table.checkout_latest()


def _reembed_once(table: Any, function: EmbedderConfig, column: str | None, source: str | None, batch_size: int,
                  allow_dims_change: bool, drop_old: bool, checkpoint: str | Path | None,
                  ray_actors: int | None) -> dict[str, Any]:
    dataset = _writable(table)
    plan = _plan(table, dataset, function, column, source, allow_dims_change, drop_old)
    if plan is None:
        return _unchanged(table, function, column, drop_old)
    ck = Checkpoint(checkpoint) if checkpoint else Checkpoint.default(table.uri, plan.column, function.fingerprint())
    work = chunks(dataset, batch_size)
    if not work:
        raise ValueError("the table has no rows, so there is nothing to embed; create it with the new function")
    embedded = _embed(dataset, work, plan, function, ck, ray_actors)
    fragments, written_schema = write_fragments(dataset, work, plan, ck)
    version = commit(dataset, plan, fragments, written_schema)
    ck.remove()
    _refresh(table)
    status = "attached" if plan.replaced is None else "switched"
    logger.info("%s column %r of %d rows with %s (%d embedded; old vectors kept in %r)", status, plan.column,
                table.count_rows(), function.name, embedded, plan.keep_as)
    return {"status": status, "column": plan.column, "kept_column": plan.keep_as, "rows": table.count_rows(),
            "embedded": embedded, "dropped": sorted(plan.drop), "version_before": dataset.version,
            "version_after": version}


def rollback_reembed(table: Any, *, column: str | None = None, drop_old: bool = False, batch_size: int = 256,
                     checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Switch ``column`` back to the model whose vectors the last :func:`reembed` kept, in one commit.

    The kept vectors come back bit for bit, without embedding; rows added since the switch
    (which only the newer model embedded) are embedded with the older one, under its drift
    guard. The vectors replaced now are kept in turn, so reembed and rollback can alternate.
    Another way back, which also undoes every later write: ``table.restore(result["version_before"])``.

    Parameters
    ----------
    table : lancedb.table.LanceTable
    column : str, optional
        The vector column; default the table's only embedding column.
    drop_old, batch_size, checkpoint
        As for :func:`reembed`.

    Returns
    -------
    dict
        As :func:`reembed` returns, with ``status`` "rolled back".
    """
    dataset = _writable(table)
    column = _embedding_column(table, column)
    kept = kept_columns(dataset.schema, column)
    if not kept:
        raise ValueError(f"column {column!r} keeps no earlier model's vectors (never re-embedded, or re-embedded "
                         "with drop_old=True): roll back with table.restore(version) instead")
    info = max(kept.values(), key=lambda k: k["kept_at"])
    from lancedb.embeddings import get_registry

    entry = {b"embedding_functions": json.dumps([info["function"]]).encode()}
    function = get_registry().parse_functions(entry)[column].function
    result = reembed(table, function, column=column, batch_size=batch_size, allow_dims_change=True,
                     drop_old=drop_old, checkpoint=checkpoint)
    return {**result, "status": "rolled back"}


def drop_kept(table: Any, column: str | None = None) -> list[str]:
    """Drop the columns that keep earlier models' vectors of ``column`` (one commit); their names."""
    dataset = _writable(table)
    column = _embedding_column(table, column)
    names = sorted(kept_columns(dataset.schema, column))
    if names:
        table.drop_columns(names)
        logger.info("dropped the kept columns %s of %r", names, column)
    return names


def kept_columns(schema: pa.Schema, column: str) -> dict[str, dict[str, Any]]:
    """The columns keeping earlier vectors of ``column``, with what each records (:data:`KEPT_KEY`)."""
    kept = {}
    for item in schema:
        info = json.loads((item.metadata or {}).get(KEPT_KEY, b"null"))
        if isinstance(info, dict) and info.get("vector_column") == column:
            kept[item.name] = info
    return kept


# ------------------------------------------------------------------ checks and plan


def _writable(table: Any) -> Any:
    """The table's Lance dataset, or an error (before any write) if this call may not write to it."""
    if not hasattr(table, "to_lance"):
        raise TypeError(f"reembed needs a local LanceDB table (lancedb.connect(path).open_table(name)), "
                        f"not {type(table).__name__}")
    dataset = table.to_lance()
    if dataset.version != dataset.latest_version:
        raise ValueError(f"the table is at version {dataset.version} but its latest is {dataset.latest_version} "
                         "(checked out with table.checkout(), or another process wrote since it was opened): "
                         "call table.checkout_latest() or open it again, then re-embed")
    path = Path(dataset.uri)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"the table directory {str(path)!r} is read-only for this process (uid "
                              f"{os.getuid()}): re-embed as its owner, or make it writable")
    return dataset


def _embedding_column(table: Any, column: str | None) -> str:
    functions = table.embedding_functions
    if column is None:
        if len(functions) != 1:
            raise ValueError(f"the table has {len(functions)} embedding columns {sorted(functions)}; pass column=")
        return next(iter(functions))
    if column not in functions:
        raise ValueError(f"column {column!r} has no embedding function (columns with one: {sorted(functions)}); "
                         "to attach one to a text column, pass source=")
    return column


def _stored_entries(dataset: Any) -> list[dict[str, Any]]:
    stored = (dataset.schema.metadata or {}).get(b"embedding_functions")
    return json.loads(stored) if stored else []


def _entry(function: EmbedderConfig, source: str, column: str) -> dict[str, Any]:
    from lancedb.embeddings import EmbeddingFunctionConfig, get_registry

    config = EmbeddingFunctionConfig(source_column=source, vector_column=column, function=function)
    return get_registry().function_to_metadata(config)


def _plan(table: Any, dataset: Any, function: EmbedderConfig, column: str | None, source: str | None,
          allow_dims_change: bool, drop_old: bool) -> Plan | None:
    """What to write (None: the column already has this model's vectors), or an error before anything is."""
    if not isinstance(function, EmbedderConfig) or function.url:
        raise TypeError(f"reembed needs a local lancedb_baai embedding function (local-baai), not {function!r}")
    if function.semantics()["output"] != "dense":
        raise ValueError("reembed fills plain vector columns; ColBERT multi-vector columns are not supported yet "
                         "(fill them with lancedb_baai.fill_multivectors)")
    if source is not None:
        return _attach_plan(dataset, function, column or "vector", source)
    column = _embedding_column(table, column)
    old = table.embedding_functions[column]
    if not isinstance(old.function, EmbedderConfig):
        raise ValueError(f"column {column!r} was written by {type(old.function).__name__}, an embedding function "
                         "of another package; lancedb_baai re-embeds only columns it made")
    recorded = (old.function.stored_provenance() or {}).get("fingerprint")
    current = function.fingerprint()
    if recorded and not _fingerprint.differences(recorded, current):
        return None
    width = dataset.schema.field(column).type.list_size
    if current["dims"] != width and not allow_dims_change:
        raise ValueError(f"{function.name!r} makes {current['dims']}-d vectors but column {column!r} holds "
                         f"{width}-d ones; pass allow_dims_change=True (searches then use the new width)")
    return _switch_plan(dataset, function, current, column, old.source_column, recorded, drop_old)


def _attach_plan(dataset: Any, function: EmbedderConfig, column: str, source: str) -> Plan:
    names = dataset.schema.names
    if source not in names:
        raise ValueError(f"source column {source!r} not found; columns are {names}. Pass source= a text column.")
    if column in names:
        raise ValueError(f"column {column!r} exists already; pass column= a new name for the vectors")
    return Plan(column=column, source=source, dims=function.ndims(),
                entries=[*_stored_entries(dataset), _entry(function, source, column)])


def _switch_plan(dataset: Any, function: EmbedderConfig, current: dict[str, Any], column: str, source: str,
                 recorded: dict[str, Any] | None, drop_old: bool) -> Plan:
    """Replace ``column``'s vectors; keep them under ``<column>__<digest>`` unless ``drop_old``."""
    entries = _stored_entries(dataset)
    old_entry = next(e for e in entries if e["vector_column"] == column)
    kept = kept_columns(dataset.schema, column)
    reuse = next((name for name, info in kept.items()
                  if not _fingerprint.differences(_recorded(info["function"]), current)), None)
    keep_as = None if drop_old else f"{column}__{(recorded or {}).get('weights') or 'unrecorded'}"
    drop = set(kept) if drop_old else {name for name in kept if name in (reuse, keep_as)}
    return Plan(column=column, source=source, dims=current["dims"], replaced=column, keep_as=keep_as,
                kept={"vector_column": column, "function": old_entry, "kept_at": dataset.version}, reuse=reuse,
                entries=[*(e for e in entries if e["vector_column"] != column), _entry(function, source, column)],
                drop=frozenset(drop))


def _recorded(entry: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint a stored function entry recorded (one that matches nothing if it has none)."""
    provenance = entry.get("model", {}).get(METADATA_KEY) or {}
    return provenance.get("fingerprint") or {"weights": None, "dims": -1}


def _embed(dataset: Any, work: list, plan: Plan, function: EmbedderConfig, ck: Checkpoint,
           ray_actors: int | None) -> int:
    """Every chunk's vectors, here or on Ray actors; how many texts were embedded."""
    if ray_actors:
        from .actors import embed_chunks

        return embed_chunks(dataset, work, plan, function, ck, ray_actors)
    rows = sum(c.rows for c in work)
    embedded = 0
    with _progress.bar(_progress.wanted(function.show_progress, rows), rows, "re-embedding") as bar:
        for chunk in work:
            embedded += embed_chunk(dataset, chunk, plan, function, ck)
            if bar is not None:
                bar.update(chunk.rows)
    return embedded


def _unchanged(table: Any, function: EmbedderConfig, column: str | None, drop_old: bool) -> dict[str, Any]:
    column = _embedding_column(table, column)
    logger.info("column %r was already made by %s: nothing to re-embed", column, function.name)
    version = table.version
    dropped = drop_kept(table, column) if drop_old else []
    return {"status": "unchanged", "column": column, "kept_column": None, "rows": table.count_rows(),
            "embedded": 0, "dropped": dropped, "version_before": version, "version_after": table.version}


def _refresh(table: Any) -> None:
    table.checkout_latest()
    table.__dict__.pop("embedding_functions", None)  # LanceTable caches the parsed functions


# ------------------------------------------------------------------ fill


def fill_missing(table: Any, *, key: str | None = None, column: str | None = None, batch_size: int = 256,
                 checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed the rows whose vector is null with the column's own function, in one commit.

    Such rows come from writes that skip the embedding function (``lance`` directly, an
    ``update`` or ``merge_insert`` of other columns, rows left for later). Vectors already
    present stay bit for bit. Batches are kept in a checkpoint directory until the commit,
    so a killed run resumes; the column's drift guard applies. A writer that commits
    meanwhile to the same fragments makes Lance refuse the commit: the call then runs again
    on the new version (up to 3 times), and never writes over what that writer did.

    Parameters
    ----------
    table : lancedb.table.LanceTable
    key : str, optional
        A column with a unique value per row to write the vectors back by (``merge_insert``,
        which moves the filled rows to the end of the table). Default: Lance's row ids, so
        the vectors go into the rows where they are and every row keeps its place.
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
    from lance.commit import CommitConflictError

    attempt = 1
    while True:
        try:
            return _fill_once(table, key, column, batch_size, checkpoint)
        except CommitConflictError:
            if attempt == _ATTEMPTS:
                raise
            attempt += 1
            logger.info("another writer committed during the fill: again on the new version")
            table.checkout_latest()


_ROWID, _ROWADDR = "_rowid", "_rowaddr"


def _fill_once(table: Any, key: str | None, column: str | None, batch_size: int,
               checkpoint: str | Path | None) -> dict[str, Any]:
    dataset = _writable(table)
    column = _embedding_column(table, column)
    conf, names = table.embedding_functions[column], table.schema.names
    for name in ([key] if key is not None else []) + [conf.source_column]:
        if name not in names:
            raise ValueError(f"column {name!r} not found; columns are {names}")
    version = table.version
    todo = _missing_rows(dataset, column, conf.source_column, key)
    if todo.num_rows == 0:
        return {"status": "complete", "column": column, "rows": 0, "version_before": version, "version_after": version}
    ck = Checkpoint(checkpoint) if checkpoint else Checkpoint.default(table.uri, f"{column}@{version}", "fill")
    updates = _fill_batches(todo, conf, column, table.schema.field(column).type, batch_size, ck)
    if key is None:
        _write_by_row_id(dataset, updates, column)
    else:
        dataset.merge_insert(key).when_matched_update_all().execute(updates)
    ck.remove()
    _refresh(table)
    return {"status": "filled", "column": column, "rows": updates.num_rows, "version_before": version,
            "version_after": table.version}


def _missing_rows(dataset: Any, column: str, source: str, key: str | None) -> pa.Table:
    """The rows to fill (a text, no vector): ``key`` and the text, or their row ids and addresses, in order."""
    where = f"{column} IS NULL AND {source} IS NOT NULL"
    if key is not None:
        return dataset.to_table(columns=[key, source], filter=where).sort_by(key)
    rows = dataset.to_table(columns=[source], filter=where, with_row_id=True, with_row_address=True)
    return rows.select([_ROWID, _ROWADDR, source]).sort_by(_ROWADDR)


def _fill_batches(todo: pa.Table, conf: Any, column: str, kind: pa.DataType, batch_size: int,
                  ck: Checkpoint) -> pa.Table:
    """Every row's new vector beside the columns that say where it goes, a checkpointed batch at a time.

    A batch is named by a digest of its rows (where they go and their texts): one kept by an
    earlier run is used only for exactly those rows.
    """
    source = conf.source_column
    where = [name for name in todo.column_names if name != source]

    def batch(rows: pa.Table) -> pa.Table:
        vectors = embedded_array(conf.function, rows[source].to_pylist(), kind)
        return pa.table({**{name: rows[name] for name in where}, column: vectors})

    parts = []
    for start in range(0, todo.num_rows, batch_size):
        rows = todo.slice(start, batch_size)
        digest = hashlib.sha256(json.dumps(rows.to_pydict(), default=str).encode()).hexdigest()[:20]
        parts.append(ck.table(f"batch-{start // batch_size:06d}-{digest}", lambda rows=rows: batch(rows)))
    return pa.concat_tables(parts)


def _write_by_row_id(dataset: Any, updates: pa.Table, column: str) -> int:
    """Put ``updates``' vectors into the rows their ``_rowid`` names, fragment by fragment, in one commit.

    Lance rewrites ``column`` of the fragments that have such rows (rows not named keep their
    vectors; deletions and the other columns stay as they are) and commits them with
    ``read_version``: a writer that changed those fragments meanwhile makes the commit fail.
    """
    import lance
    import pyarrow.compute as pc

    fragment_of = pc.shift_right(updates[_ROWADDR], 32)
    written, fields = [], set()
    for fragment_id in pc.unique(fragment_of).to_pylist():
        rows = updates.filter(pc.equal(fragment_of, fragment_id)).select([_ROWID, column])
        metadata, modified = dataset.get_fragment(fragment_id).update_columns(rows, left_on=_ROWID)
        written.append(metadata)
        fields.update(modified)
    operation = lance.LanceOperation.Update(updated_fragments=written, fields_modified=sorted(fields))
    return lance.LanceDataset.commit(dataset.uri, operation, read_version=dataset.version).version
