"""Local BAAI bge embedders and rerankers as first-class LanceDB citizens.

``import lancedb_baai`` registers ``local-baai`` (embeddings) and ``local-baai-rerank``
(cross-encoder) in LanceDB's embedding registry. The import is light: torch loads when a
model is first used. Models live in a per-process cache and load once per process.
"""

from __future__ import annotations

from ._cache import CACHE as _CACHE
from .embeddings import BAAIEmbeddings
from .lifecycle import loaded, preload, release, rollback, swap
from .reranker import BAAIRerankFunction, BAAIReranker

__version__ = "0.1.0"


def cache_info() -> list[dict]:
    """One record per cached engine in this process: model, device, dtype, kind, loads, calls, pid."""
    return _CACHE.info()


def load_count() -> int:
    """Model loads in this process so far (released engines included; reset in a forked child)."""
    return _CACHE.total_loads()


__all__ = ["BAAIEmbeddings", "BAAIRerankFunction", "BAAIReranker", "cache_info", "load_count", "loaded", "preload", "release", "rollback", "swap", "__version__"]
