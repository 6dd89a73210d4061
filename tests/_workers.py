"""Pool workers' targets and initializers for test_cache.py and test_lifecycle.py.

A module of its own, so spawn children can import it.
"""

from __future__ import annotations

import os


def wait_for_peers(barrier) -> None:
    """Pool initializer: start taking tasks only once every worker is up, so all of them get some."""
    barrier.wait(timeout=120)


def embed_and_count(function) -> tuple[int, int]:
    """Embed with a pickled `local-baai` function; report (pid, model loads in this process)."""
    import lancedb_baai

    function.compute_source_embeddings(["a text embedded in a spawned worker"])
    return os.getpid(), lancedb_baai.load_count()
