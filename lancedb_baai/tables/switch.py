"""Putting another model's vectors under a table's vector column, in one Lance commit, resumable after a kill.

Three steps, none visible to readers until the last:

1. **chunks**: the live rows of each fragment, a batch at a time. A chunk's new vectors
   (embedded, or taken from a kept column that the target model made) are kept in the
   checkpoint as soon as they exist. Chunks run here or on Ray actors
   (:func:`lancedb_baai.tables.actors.embed_chunks`); a chunk is the unit of work and of resume.
2. **fragments**: Lance writes each fragment's new data files (``merge_columns``, no commit):
   the new vectors, and the vectors they replace as ``list<float32>``, which LanceDB does not
   take for a vector column, so plain ``table.search("text")`` has exactly one to use. The
   written fragment is kept in the checkpoint too.
3. **one commit** (Lance ``Merge``): the new fragments, and a schema in which the new
   vectors carry the column's own name, the replaced ones are kept under another name, and
   the embedding-function metadata names the new model. Readers see the table before or
   after, never in between.

Chunks and fragments are named by a digest of the fragment's files and deletions, so a
fragment that changed between a kill and the resume is done again, and one that did not is
taken from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from . import lance_schema as _lance_schema
from ..functions.arrow import vector_array
from .checkpoint import Checkpoint

KEPT_KEY = b"lancedb_baai.kept"
"""Field metadata of a kept column: the vector column it was, its function entry, the version it was kept at."""

_NEW, _KEPT = "_lancedb_baai_new", "_lancedb_baai_kept"  # names while Lance writes; renamed by the commit
_ROWADDR = "_rowaddr"


@dataclass(frozen=True)
class Plan:
    """What one switch writes. Built and checked by :mod:`lancedb_baai.reembed` before anything is."""

    column: str
    """The vector column searches use, before and after."""
    source: str
    """The text column the vectors are made from."""
    dims: int
    entries: list[dict[str, Any]]
    """The table's embedding-function metadata after the switch."""
    replaced: str | None = None
    """The column whose vectors the new ones replace (None: attaching a new column)."""
    keep_as: str | None = None
    """Where the replaced vectors are kept (None: not kept)."""
    kept: dict[str, Any] | None = None
    """What the kept column records about itself (:data:`KEPT_KEY`)."""
    reuse: str | None = None
    """A kept column whose vectors the target model made: taken instead of embedded."""
    drop: frozenset[str] = field(default_factory=frozenset)
    """Other columns the commit removes."""

    @property
    def kind(self) -> pa.DataType:
        return pa.list_(pa.float32(), self.dims)


class Chunk(NamedTuple):
    """Rows ``offset`` to ``offset + rows`` of the live rows of one fragment (as it was when planned)."""

    fragment: int
    key: str
    offset: int
    rows: int

    @property
    def name(self) -> str:
        return f"chunk-{self.fragment}-{self.key}-{self.offset:010d}-{self.rows}"


def fragment_key(fragment: Any) -> str:
    """A digest of a fragment's data files and deletions: equal while neither changes."""
    description = json.dumps(fragment.metadata.to_json(), sort_keys=True, default=str)
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def chunks(dataset: Any, batch_size: int) -> list[Chunk]:
    """Every chunk of ``dataset``, fragment by fragment, in row order."""
    work = []
    for fragment in dataset.get_fragments():
        key, live = fragment_key(fragment), fragment.count_rows()
        work += [Chunk(fragment.fragment_id, key, offset, min(batch_size, live - offset))
                 for offset in range(0, live, batch_size)]
    return work


def embed_chunk(dataset: Any, chunk: Chunk, plan: Plan, function: Any, checkpoint: Checkpoint) -> int:
    """Make and keep ``chunk``'s new vectors, unless a previous run did; how many texts were embedded."""
    if checkpoint.has(chunk.name):
        return 0
    columns = [plan.source, *([plan.reuse] if plan.reuse else [])]
    rows = dataset.get_fragment(chunk.fragment).to_table(columns=columns, offset=chunk.offset, limit=chunk.rows,
                                                          with_row_address=True)
    vectors, embedded = _new_vectors(rows, plan, function)
    checkpoint.table(chunk.name, lambda: pa.table({_ROWADDR: rows[_ROWADDR], "vector": vectors}))
    return embedded


def _new_vectors(rows: pa.Table, plan: Plan, function: Any) -> tuple[pa.Array, int]:
    """The rows' vectors from the kept column where it has one, else embedded (a null text gets null)."""
    count = rows.num_rows
    kept = rows[plan.reuse].combine_chunks().cast(plan.kind) if plan.reuse else pa.nulls(count, plan.kind)
    missing = np.flatnonzero(np.asarray(kept.is_null()))
    texts = rows[plan.source].to_pylist()
    made = embedded_array(function, [texts[i] for i in missing], plan.kind)
    order = np.arange(count)
    order[missing] = count + np.arange(len(missing))
    return pa.concat_arrays([kept, made]).take(pa.array(order)), len(missing)


def embedded_array(function: Any, texts: list[str | None], kind: pa.DataType) -> pa.Array:
    """``function``'s vectors of ``texts`` as an array of ``kind``; a null text gets a null vector."""
    present = [i for i, t in enumerate(texts) if t is not None]
    made = np.asarray(function.generate_embeddings([texts[i] for i in present]) if present else [],
                      dtype=np.float32).reshape(len(present), kind.list_size)
    if len(present) == len(texts):
        return vector_array(made)
    rows: list[Any] = [None] * len(texts)
    for i, vector in zip(present, made):
        rows[i] = vector.tolist()
    return pa.array(rows, type=kind)


def write_fragments(dataset: Any, work: list[Chunk], plan: Plan, checkpoint: Checkpoint) -> tuple[list, Any]:
    """Each fragment with its new data files (written once, kept), and the schema Lance gave them."""
    from lance.fragment import FragmentMetadata

    written = []
    for fragment in dataset.get_fragments():
        own = [c for c in work if c.fragment == fragment.fragment_id]
        name = f"fragment-{fragment.fragment_id}-{fragment_key(fragment)}"
        written.append(checkpoint.document(name, lambda: _write_fragment(fragment, own, plan, checkpoint)))
    fragments = [FragmentMetadata.from_json(json.dumps(doc["fragment"])) for doc in written]
    return fragments, _lance_schema.from_document(written[0]["schema"])


def _write_fragment(fragment: Any, work: list[Chunk], plan: Plan, checkpoint: Checkpoint) -> dict[str, Any]:
    import lance

    fields = [pa.field(_NEW, plan.kind)]
    if plan.keep_as:
        fields.append(pa.field(_KEPT, pa.list_(pa.float32()), metadata={KEPT_KEY: json.dumps(plan.kept)}))
    schema = pa.schema(fields)
    cursor = _Cursor(checkpoint.table(c.name, _lost(c)) for c in work)

    def columns(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [cursor.take(batch[_ROWADDR])]
        if plan.keep_as:
            arrays.append(batch[plan.replaced].cast(pa.list_(pa.float32())))
        return pa.record_batch(arrays, schema=schema)

    read = [_ROWADDR, *([plan.replaced] if plan.keep_as else [])]
    metadata, lance_schema = fragment.merge_columns(lance.udf.BatchUDF(columns, output_schema=schema), columns=read)
    return {"fragment": metadata.to_json(), "schema": _lance_schema.to_document(lance_schema)}


def _lost(chunk: Chunk) -> Any:
    def fail() -> pa.Table:
        raise RuntimeError(f"the checkpoint lost {chunk.name} between embedding and writing; run again")
    return fail


class _Cursor:
    """The kept chunks of one fragment, read in row order as Lance asks for them."""

    def __init__(self, parts: Iterator[pa.Table]) -> None:
        self.parts = iter(parts)
        self.rest: pa.Table | None = None

    def take(self, addresses: pa.Array) -> pa.Array:
        pieces, wanted = [], len(addresses)
        while wanted:
            if self.rest is None or self.rest.num_rows == 0:
                self.rest = next(self.parts)
            piece, self.rest = self.rest.slice(0, wanted), self.rest.slice(wanted)
            pieces.append(piece)
            wanted -= piece.num_rows
        rows = pa.concat_tables(pieces)
        if not rows[_ROWADDR].combine_chunks().equals(addresses):
            raise RuntimeError("the kept vectors do not line up with the table's rows (the table changed "
                               "under the re-embed); run it again, with a new checkpoint if this repeats")
        return rows["vector"].combine_chunks()


def commit(dataset: Any, plan: Plan, fragments: list, written_schema: Any) -> int:
    """The one commit that puts the new vectors under ``plan.column``; the new table version."""
    import lance

    metadata = dict(dataset.schema.metadata or {})
    metadata[b"embedding_functions"] = json.dumps(plan.entries, indent=2).encode()
    rename = {_NEW: plan.column, **({_KEPT: plan.keep_as} if plan.keep_as else {})}
    drop = set(plan.drop) | ({plan.replaced} if plan.replaced else set())
    schema = _lance_schema.rebuild(written_schema, drop, rename, metadata)
    done = lance.LanceDataset.commit(dataset.uri, lance.LanceOperation.Merge(fragments, schema),
                                     read_version=dataset.version)
    return done.version
