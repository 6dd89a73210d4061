"""Scale-out ingest on Ray Data: :func:`embed_to_lance` reads, embeds on an actor pool and writes Lance.

Lance fragments are written from the workers into a staging dataset, and the target table
is created (or overwritten) from it in one commit at the end, with the same schema and
embedding-function metadata that ``table.add`` on a LanceDB table would give. A failure
leaves the target as it was.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from ..functions.embeddings import BAAIEmbeddings
from ..tables.actors import actor_options, require_ray
from .batches import DEBUG_COLUMNS, BAAIEmbedBatches, BadRowError, as_function, is_string_type

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

Mode = Literal["create", "overwrite"]
MODES: tuple[str, ...] = ("create", "overwrite")

_STAGING_DIR = "_lancedb_baai_staging"  # not a "*.lance" name, so LanceDB never lists it as a table
_ROWS_PER_STAGING_FILE = 16384
_ACTOR_START_TIMEOUT_S = 900  # model actors may wait for an autoscaler to add GPU nodes


@dataclass(frozen=True)
class IngestReport:
    """What :func:`embed_to_lance` wrote, and what each actor loaded to do it.

    ``actors`` holds one record per actor that embedded rows: ``actor`` (Ray actor id),
    ``pid``, ``load_count`` (model loads in that process) and ``rows``.
    """

    uri: str
    table: str
    rows: int
    actors: list[dict[str, Any]]

    @property
    def loads(self) -> int:
        """Model loads across all actors (one per actor when each loaded once)."""
        return sum(actor["load_count"] for actor in self.actors)


def embed_to_lance(source: Any, uri: str | os.PathLike, table_name: str,
                   function: BAAIEmbeddings | Mapping[str, Any], text_column: str = "text",
                   vector_column: str = "vector", *, concurrency: int = 2, batch_size: int = 256,
                   mode: Mode = "create", schema: Any = None, num_cpus: float | None = None,
                   num_gpus: float | None = None,
                   storage_options: dict[str, str] | None = None) -> IngestReport:
    """Embed ``source`` on a Ray actor pool and write it as a LanceDB table with auto-embedding.

    The table gets the schema and ``embedding_functions`` metadata that creating it with
    ``schema`` and this function, then ``table.add``-ing the rows, would give: it opens
    and searches by text afterwards in any process that imports ``lancedb_baai``. Workers
    write their fragments to a staging dataset beside the tables; the target is created
    (or overwritten, atomically) from it only when every row is embedded, so a failure
    leaves the target as it was, and re-running an ``overwrite`` job gives the same rows.
    Row order follows the order batches finish in, not the source's.

    Parameters
    ----------
    source : str, path or ray.data.Dataset
        A Parquet file or directory, a ``.json``/``.jsonl`` file, a ``.lance`` dataset, or a Dataset.
    uri : str or path
        The LanceDB database: a local directory or an object-store URI. On a multi-node
        cluster it must be storage every node can write (``s3://``, ``gs://``, NFS).
    table_name : str
    function : BAAIEmbeddings or dict
        The ``local-baai`` configuration, or the dict of its ``create()`` arguments.
    text_column, vector_column : str
        The column to embed, and the vector column to add.
    concurrency : int, default 2
        Model actors; each loads the model once.
    batch_size : int, default 256
        Rows per actor call (the model then batches by length within it).
    mode : {"create", "overwrite"}, default "create"
        "create" refuses an existing table before any work is done.
    schema : pyarrow.Schema or LanceModel class, optional
        The target table's schema; by default the source's columns plus the vector column.
    num_cpus, num_gpus : float, optional
        Resources per actor; see :func:`actor_options` for the defaults.
    storage_options : dict, optional
        Object-store options, passed to LanceDB and Lance.

    Returns
    -------
    IngestReport
        Rows written and, per actor, its process id and model loads.
    """
    function = as_function(function, BAAIEmbedBatches.registry_name, BAAIEmbeddings)
    uri, db = _open_target(uri, table_name, mode, storage_options)
    dataset = read_source(source)
    target = target_schema(_arrow_schema(dataset), function, text_column, vector_column, schema)
    staging = f"{uri.rstrip('/')}/{_STAGING_DIR}/{table_name}-{uuid.uuid4().hex}.lance"
    job = _Job(function, text_column, vector_column, target, staging, storage_options)
    rows, actors = job.ingest(dataset, db, table_name, mode, concurrency, batch_size, num_cpus, num_gpus)
    logger.info("embedded %d rows into %r on %d actors", rows, table_name, len(actors))
    return IngestReport(uri, table_name, rows, actors)


def _open_target(uri: str | os.PathLike, table_name: str, mode: Mode,
                 storage_options: dict[str, str] | None) -> tuple[str, Any]:
    """The database's URI and connection, once ``mode`` allows writing ``table_name`` there."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not supported; use one of {list(MODES)}")
    uri = _local_or_object_store(uri)
    db = _connect(uri, storage_options)
    if mode == "create" and _table_exists(db, table_name):
        raise ValueError(f"table {table_name!r} already exists in {uri!r}; pass mode='overwrite' "
                         "to replace it (the old version stays until the new one is committed)")
    return uri, db


def read_source(source: Any) -> ray.data.Dataset:
    """A Ray Dataset from a Dataset, a Parquet file or directory, a JSON(L) file or a Lance dataset."""
    ray = require_ray()
    if isinstance(source, ray.data.Dataset):
        return source
    path = os.fspath(source)
    lowered = path.rstrip("/").lower()
    if lowered.endswith(".lance"):
        return ray.data.read_lance(path)
    if lowered.endswith((".json", ".jsonl")):
        return ray.data.read_json(path)
    if lowered.endswith(".parquet") or "://" in path or os.path.isdir(path):
        return ray.data.read_parquet(path)
    raise ValueError(f"cannot tell the format of {path!r}: pass a .parquet, .json, .jsonl or .lance "
                     "path, a directory of Parquet files, or a ray.data.Dataset")


def target_schema(source: pa.Schema, function: BAAIEmbeddings, text_column: str,
                  vector_column: str, schema: Any = None) -> pa.Schema:
    """The table's schema (without metadata): the source's columns and a float32 vector column."""
    if text_column not in source.names:
        raise ValueError(f"column {text_column!r} not found in the source; columns are "
                         f"{source.names}. Pass text_column= the column to embed.")
    if not is_string_type(source.field(text_column).type):
        raise BadRowError(f"column {text_column!r} holds {source.field(text_column).type} values, "
                          "not strings; bge models take text only: cast or convert the column first.")
    vector = pa.field(vector_column, pa.list_(pa.float32(), function.ndims()))
    if schema is None:
        if vector_column in source.names:
            raise ValueError(f"the source already has a column {vector_column!r}; pass vector_column= "
                             "another name, or drop it first")
        return pa.schema([*source, vector])
    if inspect.isclass(schema):  # a LanceModel
        schema = schema.to_arrow_schema()
    if vector_column not in schema.names or schema.field(vector_column).type != vector.type:
        found = schema.field(vector_column).type if vector_column in schema.names else "nothing"
        raise ValueError(f"schema must have {vector_column!r} as {vector.type} for this model; "
                         f"it has {found}")
    return schema.remove_metadata()


class _Job:
    """One ingest: embed on actors, stage fragments, then commit the target from the staging dataset."""

    def __init__(self, function: BAAIEmbeddings, text_column: str, vector_column: str,
                 schema: pa.Schema, staging: str, storage_options: dict[str, str] | None) -> None:
        self.function, self.schema, self.staging = function, schema, staging
        self.text_column, self.vector_column = text_column, vector_column
        self.storage_options = storage_options

    def ingest(self, dataset: ray.data.Dataset, db: Any, table_name: str, mode: Mode, concurrency: int,
               batch_size: int, num_cpus: float | None,
               num_gpus: float | None) -> tuple[int, list[dict[str, Any]]]:
        """Embed, stage and commit; the rows written and per-actor records. The staging dataset is removed."""
        try:
            fragments, actors = self.run(dataset, concurrency, batch_size, num_cpus, num_gpus)
            return self.commit(db, table_name, fragments, mode), actors
        except Exception as error:
            raise _explained(error, table_name) from error
        finally:
            _remove(self.staging, self.storage_options)

    def run(self, dataset: ray.data.Dataset, concurrency: int, batch_size: int,
            num_cpus: float | None, num_gpus: float | None) -> tuple[list[str], list[dict[str, Any]]]:
        """Embed and write staging fragments; return the fragments and per-actor records."""
        options = actor_options(self.function, concurrency, num_cpus, num_gpus)
        arguments = {"function": self.function, "text_column": self.text_column,
                     "vector_column": self.vector_column, "debug": True}
        staged = (
            dataset.repartition(target_num_rows_per_block=batch_size)  # streaming: spreads rows over actors
            .map_batches(BAAIEmbedBatches, fn_constructor_kwargs=arguments, batch_size=batch_size,
                         batch_format="pyarrow", concurrency=concurrency, **options)
            .map_batches(_write_fragments, batch_size=_ROWS_PER_STAGING_FILE, batch_format="pyarrow",
                         fn_kwargs={"uri": self.staging, "schema": self.schema,
                                    "storage_options": self.storage_options})
        )
        with _job_context(staged.context):
            results = staged.take_all()
        fragments = [f for result in results for f in json.loads(result["fragments"])]
        actors = _merge_actors(json.loads(result["actors"]) for result in results)
        return fragments, actors

    def commit(self, db: Any, table_name: str, fragments: list[str], mode: Mode) -> int:
        """Create the target from the staging dataset in one commit; return its row count."""
        import lance
        from lancedb.embeddings import EmbeddingFunctionConfig

        metadata = [lance.fragment.FragmentMetadata.from_json(f) for f in fragments]
        staged = lance.LanceDataset.commit(self.staging, lance.LanceOperation.Overwrite(self.schema, metadata),
                                           storage_options=self.storage_options)
        config = EmbeddingFunctionConfig(source_column=self.text_column, vector_column=self.vector_column,
                                         function=self.function)
        table = db.create_table(table_name, data=staged.scanner().to_reader(), schema=self.schema,
                                embedding_functions=[config], mode=mode)
        return table.count_rows()


@contextmanager
def _job_context(context: Any) -> Iterator[None]:
    """Settings this job needs on its (shared) DataContext, put back afterwards.

    All actors start before the first batch, so the work spreads over every actor and
    each one's single load is counted; and a failing batch raises its own exception
    (a :class:`BadRowError` stays one) instead of a generic UserCodeException.
    """
    wanted = {"wait_for_min_actors_s": _ACTOR_START_TIMEOUT_S, "raise_original_map_exception": True}
    saved = {name: getattr(context, name) for name in wanted}
    for name, value in wanted.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _write_fragments(batch: pa.Table, uri: str, schema: pa.Schema,
                     storage_options: dict[str, str] | None) -> pa.Table:
    """Write embedded rows as uncommitted Lance fragments; return them and who embedded the rows."""
    import lance

    actors = batch.group_by(list(DEBUG_COLUMNS[:2])).aggregate(
        [(DEBUG_COLUMNS[2], "max"), (DEBUG_COLUMNS[0], "count")])
    records = [{"actor": r[DEBUG_COLUMNS[0]], "pid": r[DEBUG_COLUMNS[1]],
                "load_count": r[f"{DEBUG_COLUMNS[2]}_max"], "rows": r[f"{DEBUG_COLUMNS[0]}_count"]}
               for r in actors.to_pylist()]
    data = batch.select(schema.names).cast(schema)
    fragments = lance.fragment.write_fragments(data, uri, schema=schema, mode="overwrite",
                                               storage_options=storage_options)
    return pa.table({"fragments": [json.dumps([json.dumps(f.to_json()) for f in fragments])],
                     "actors": [json.dumps(records)]})


def _merge_actors(groups: Any) -> list[dict[str, Any]]:
    """One record per actor from the per-write-task records."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for group in groups:
        for record in group:
            key = (record["actor"], record["pid"])
            if key in merged:
                merged[key]["rows"] += record["rows"]
                merged[key]["load_count"] = max(merged[key]["load_count"], record["load_count"])
            else:
                merged[key] = dict(record)
    return sorted(merged.values(), key=lambda r: (r["pid"], r["actor"]))


def _explained(error: Exception, table_name: str) -> Exception:
    """The bad-row error raised in an actor, told plainly; any other error as it came."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current) is BadRowError:
            message = str(current).split("\n", 1)[0]  # Ray appends its retry advice on later lines
            return BadRowError(f"{message} Nothing was written to table {table_name!r}.")
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return error


def _arrow_schema(dataset: ray.data.Dataset) -> pa.Schema:
    schema = dataset.schema()
    base = getattr(schema, "base_schema", schema)
    if not isinstance(base, pa.Schema):
        raise TypeError("the dataset's blocks are not Arrow tables; build it with ray.data.read_* "
                        "or ray.data.from_arrow")
    return pa.schema(list(base))


def _local_or_object_store(uri: str | os.PathLike) -> str:
    uri = os.fspath(uri)
    if uri.startswith("db://"):
        raise ValueError("embed_to_lance writes Lance files itself: pass a local directory or an "
                         "object-store URI (s3://, gs://, az://), not a LanceDB Cloud db:// URI")
    return uri if "://" in uri else os.path.abspath(uri)


def _connect(uri: str, storage_options: dict[str, str] | None) -> Any:
    import lancedb

    return lancedb.connect(uri, storage_options=storage_options)


def _table_exists(db: Any, table_name: str) -> bool:
    try:
        db.open_table(table_name)
    except (ValueError, FileNotFoundError, OSError, RuntimeError):
        return False
    return True


def _remove(staging: str, storage_options: dict[str, str] | None) -> None:
    """Delete the staging dataset (and its parent directory once empty, for a local database)."""
    if "://" not in staging:
        shutil.rmtree(staging, ignore_errors=True)
        parent = os.path.dirname(staging)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(staging)
    try:
        filesystem.delete_dir(path)
    except (FileNotFoundError, OSError):
        logger.debug("staging dataset %s was not there to delete", staging)
