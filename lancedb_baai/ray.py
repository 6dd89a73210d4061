"""Scale-out ingest on Ray Data: one cached engine per actor, written straight to Lance.

Two callable classes plug into ``Dataset.map_batches(..., batch_format="pyarrow")`` on an
actor pool: :class:`BAAIEmbedBatches` appends a vector column, :class:`BAAIRerankBatches`
appends a score column. Each actor loads its model once, from this package's per-process
engine cache, when Ray constructs it; batches go Arrow in, Arrow out.

:func:`embed_to_lance` runs the whole job: read, embed on an actor pool, write Lance
fragments from the workers into a staging dataset, and create (or overwrite) the target
table from it in one commit at the end, with the same schema and embedding-function
metadata that ``table.add`` on a LanceDB table would give. A failure leaves the target as
it was. :func:`embed_chunks` is the embedding step of ``lancedb_baai.reembed(...,
ray_actors=N)``, resumable like the local one.

Ray is imported when first needed: install it with ``pip install "lancedb_baai[ray]"``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .functions.arrow import vector_array
from .engines.cache import CACHE
from .tables.checkpoint import Checkpoint
from .functions.config import EngineConfig
from .tables.switch import Chunk, Plan, embed_chunk
from .functions.embeddings import BAAIEmbeddings
from .functions.reranker import BAAIRerankFunction

if TYPE_CHECKING:
    import ray.data

__all__ = ["BAAIEmbedBatches", "BAAIRerankBatches", "BadRowError", "DEBUG_COLUMNS", "IngestReport",
           "actor_options", "embed_chunks", "embed_to_lance"]

logger = logging.getLogger(__name__)

Mode = Literal["create", "overwrite"]
MODES: tuple[str, ...] = ("create", "overwrite")

DEBUG_COLUMNS: tuple[str, ...] = ("baai_actor", "baai_pid", "baai_load_count")
"""Columns a ``debug=True`` batch class appends: Ray actor id, process id, model loads in that process."""

_STAGING_DIR = "_lancedb_baai_staging"  # not a "*.lance" name, so LanceDB never lists it as a table
_ROWS_PER_STAGING_FILE = 16384
_ACTOR_START_TIMEOUT_S = 900  # model actors may wait for an autoscaler to add GPU nodes


class BadRowError(ValueError):
    """A row the model cannot take (null, not a string), named by its column and row."""


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError(
            'lancedb_baai.ray needs Ray Data: pip install "lancedb_baai[ray]"'
        ) from error
    return ray


# --------------------------------------------------------------------------- batch classes


class _BatchFunction:
    """What both batch classes share: a configuration, its engine loaded at construction, debug columns."""

    registry_name: ClassVar[str]
    config_class: ClassVar[type[EngineConfig]]

    def __init__(self, function: EngineConfig | Mapping[str, Any], debug: bool = False) -> None:
        self.function = as_function(function, self.registry_name, self.config_class)
        self.debug = debug
        # Ray builds the class once per actor: load here, so batches only ever hit the cache.
        self.function.engine()

    def cache_info(self) -> list[dict[str, Any]]:
        """This process's ``lancedb_baai.cache_info()`` records (call it on a Ray actor handle)."""
        return CACHE.info()

    def _finish(self, batch: pa.Table) -> pa.Table:
        if not self.debug:
            return batch
        rows = batch.num_rows
        values = (_actor_id(), os.getpid(), CACHE.total_loads())
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
    if not _is_string_type(values.type):
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


def _is_string_type(kind: pa.DataType) -> bool:
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


def _actor_id() -> str:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_actor_id() or ""


# --------------------------------------------------------------------------- resources


def actor_options(function: EngineConfig, concurrency: int, num_cpus: float | None = None,
                  num_gpus: float | None = None) -> dict[str, float]:
    """``num_cpus``/``num_gpus`` for each of ``concurrency`` model actors on the connected cluster.

    An actor gets a GPU when the function's device is CUDA, or "auto" on a cluster that has
    GPUs. CPU actors take at most one CPU each, and together leave one CPU free so Ray
    Data's read and write tasks can still be scheduled (on a 2-CPU machine, 2 actors would
    otherwise hold every CPU and the job would wait forever).
    """
    ray = require_ray()
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    if num_gpus is None:
        device = function.device
        on_gpu = device.startswith("cuda") or (device == "auto" and resources.get("GPU", 0) >= 1)
        num_gpus = 1 if on_gpu else 0
    if num_cpus is None:
        spare = (resources.get("CPU", 1.0) - 1.0) / max(concurrency, 1)
        num_cpus = min(1.0, max(spare, 0.05))
    options = {"num_cpus": float(num_cpus)}
    if num_gpus:
        options["num_gpus"] = float(num_gpus)
    return options


# --------------------------------------------------------------------------- embed_to_lance


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
    if not _is_string_type(source.field(text_column).type):
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


# --------------------------------------------------------------------------- reembed on actors


def embed_chunks(dataset: Any, work: list[Chunk], plan: Plan, function: BAAIEmbeddings, checkpoint: Checkpoint,
                 actors: int) -> int:
    """Make :func:`lancedb_baai.reembed`'s chunks on ``actors`` Ray actors; how many texts they embedded.

    Each actor loads the model once, opens the table at the planned version and keeps its
    chunks in the checkpoint directory, which every actor must reach (one machine, or a
    shared filesystem). Chunks kept by an earlier run are skipped, so a run killed at any
    point (driver or actor) resumes like the local one.
    """
    ray = require_ray()
    todo = [chunk for chunk in work if not checkpoint.has(chunk.name)]
    if not todo:
        return 0
    options = actor_options(function, actors)
    pool = [ray.remote(_ChunkActor).options(**options).remote(function, dataset.uri, dataset.version, plan,
                                                              checkpoint)
            for _ in range(min(actors, len(todo)))]
    calls = [pool[i % len(pool)].run.remote(chunk) for i, chunk in enumerate(todo)]
    try:
        return sum(ray.get(calls))
    finally:
        for actor in pool:
            ray.kill(actor)


class _ChunkActor:
    """One Ray actor of :func:`embed_chunks`: the model, loaded once, and the table at one version."""

    def __init__(self, function: BAAIEmbeddings, uri: str, version: int, plan: Plan, checkpoint: Checkpoint) -> None:
        import lance

        self.function, self.plan, self.checkpoint = function, plan, checkpoint
        self.dataset = lance.dataset(uri, version=version)
        function.engine()

    def run(self, chunk: Chunk) -> int:
        return embed_chunk(self.dataset, chunk, self.plan, self.function, self.checkpoint)


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
