"""Ray actors for the package's jobs: where a model actor goes, and the re-embed chunks they embed.

:func:`actor_options` sizes the model actors of any job (ingest, re-embed) on the connected
cluster; :func:`embed_chunks` is the embedding step of ``lancedb_baai.reembed(...,
ray_actors=N)``, resumable like the local one. Ray is imported when first needed: install it
with ``pip install "lancedb_baai[ray]"``.
"""

from __future__ import annotations

import sys
from typing import Any

from ..functions.config import EngineConfig
from ..functions.embeddings import BAAIEmbeddings
from ..runtimes.streams import throughput_by_default
from .checkpoint import Checkpoint
from .switch import Chunk, Plan, embed_chunk


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


def actor_id() -> str:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_actor_id() or ""


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
        throughput_by_default()
        function.engine()

    def run(self, chunk: Chunk) -> int:
        return embed_chunk(self.dataset, chunk, self.plan, self.function, self.checkpoint)
