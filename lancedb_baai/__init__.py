"""Local BAAI bge embedders and rerankers as first-class LanceDB citizens.

``import lancedb_baai`` registers ``local-baai`` (embeddings), ``local-baai-rerank``
(cross-encoder) and ``local-baai-m3-colbert`` (bge-m3 multi-vectors) in LanceDB's registry. The import is light: torch loads when a
model is first used. Models live in a per-process cache and load once per process.
"""

from __future__ import annotations

from .engines.cache import CACHE as _CACHE
from .models.trust import allow_remote_code, allow_url
from .engines.report import CacheInfo
from ._version import __version__
from .functions.drift import EmbeddingDriftError, describe
from .functions.embeddings import BAAIEmbeddings
from .lifecycle import loaded, preload, release, rollback, swap
from .functions.m3 import BGEM3ColbertEmbeddings, BGEM3Embeddings, BGEM3Reranker, fill_multivectors, sparse_column
from .tables.reembed import fill_missing, reembed, rollback_reembed
from .functions.reranker import BAAIRerankFunction, BAAIReranker



def cache_info() -> CacheInfo:
    """One record per cached engine in this process: model, device, dtype, kind, loads, calls, pid.

    A ``list`` of dicts that prints as a table in a terminal and renders as one in a notebook.
    """
    return CacheInfo(_CACHE.info())


def load_count() -> int:
    """Model loads in this process so far (released engines included; reset in a forked child)."""
    return _CACHE.total_loads()


__all__ = [
    "BAAIEmbeddings", "BAAIRerankFunction", "BAAIReranker",
    "BGEM3Embeddings", "BGEM3ColbertEmbeddings", "BGEM3Reranker", "fill_multivectors", "sparse_column",
    "EmbeddingDriftError", "describe", "reembed", "rollback_reembed", "fill_missing",
    "allow_remote_code", "allow_url", "cache_info", "load_count", "preload", "release", "loaded", "swap", "rollback", "__version__",
]
