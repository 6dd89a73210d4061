"""Ray: scale-out ingest on Ray Data (:mod:`.ingest`) and batch classes for your own pipelines (:mod:`.batches`).

Each actor loads its model once, from this package's per-process engine cache. Re-embedding
a table on actors (``lancedb_baai.reembed(..., ray_actors=N)``) runs in
:mod:`lancedb_baai.tables.actors`, which also sizes every job's model actors.

Ray is imported when first needed: install it with ``pip install "lancedb_baai[ray]"``.
"""

from __future__ import annotations

from ..tables.actors import actor_options, embed_chunks, require_ray
from .batches import DEBUG_COLUMNS, BAAIEmbedBatches, BAAIRerankBatches, BadRowError, as_function, string_column
from .ingest import IngestReport, embed_to_lance, read_source, target_schema

__all__ = ["BAAIEmbedBatches", "BAAIRerankBatches", "BadRowError", "DEBUG_COLUMNS", "IngestReport",
           "actor_options", "as_function", "embed_chunks", "embed_to_lance", "read_source", "require_ray",
           "string_column", "target_schema"]
