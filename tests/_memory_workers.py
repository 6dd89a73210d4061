"""Targets for the weight-memory tests' spawned workers (importable by spawn children)."""

from __future__ import annotations

import os


def load_and_hold(tiny: str, model: str, backend: str, dtype: str, queue, release) -> None:
    """Warm the runtime on ``tiny``, then load ``model`` and embed; report what the load added; wait."""
    import lancedb_baai
    from lancedb_baai.runtimes.memory import anonymous_bytes

    def embed(name: str) -> list[float]:
        fn = lancedb_baai.BAAIEmbeddings(name=name, backend=backend, dtype=dtype)
        return [float(x) for x in fn.generate_embeddings(["a text about python", "another one"])[0]]

    embed(tiny)  # imports, runtime start-up and thread pools are not the model's
    before = anonymous_bytes()
    vector = embed(model)
    record = next(r for r in lancedb_baai.cache_info() if r["model"] == model)
    queue.put({"pid": os.getpid(), "private": anonymous_bytes() - before, "vector": vector,
               "record": {k: v for k, v in record.items() if k.startswith(("weights_", "shared_weights"))}})
    release.wait(300)


def choice_in_child(name: str, queue) -> None:
    """What "auto" picks in a process started by multiprocessing, and why."""
    import lancedb_baai

    record = lancedb_baai.preload(name)
    queue.put((record["backend"], record["backend_reason"]))
