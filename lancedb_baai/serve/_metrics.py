"""Prometheus metrics of one server: requests, latency, batches, queue depth, loads, swaps, versions.

Each app gets its own registry, so several apps in one process (tests, embedding) never
clash. Under gunicorn (``--workers N`` > 1) prometheus-client's multiprocess mode is used:
the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus-client, every
worker writes its samples there, and ``/metrics`` on any worker sums them over all workers.
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's metric objects and their text exposition."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lancedb_baai_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("lancedb_baai_request_seconds", "Request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_requests = Histogram("lancedb_baai_batch_requests", "Requests merged into one engine call",
                                        ["model"], buckets=_SIZE_BUCKETS, registry=r)
        self.batch_texts = Histogram("lancedb_baai_batch_texts", "Texts in one engine call", ["model"],
                                     buckets=_SIZE_BUCKETS, registry=r)
        self.engine_calls = Counter("lancedb_baai_engine_calls", "Engine calls (merged batches)", ["model"],
                                    registry=r)
        self.forward_passes = Counter("lancedb_baai_forward_passes", "Model forward passes", ["model"],
                                      registry=r)
        self.queue_depth = Gauge("lancedb_baai_queue_depth", "Requests waiting per model", ["model"],
                                 multiprocess_mode="livesum", registry=r)
        self.loads = Counter("lancedb_baai_model_loads", "Model loads", ["model"], registry=r)
        self.admin = Counter("lancedb_baai_admin_actions", "Admin actions by action and result",
                             ["action", "result"], registry=r)
        self.weights = Gauge("lancedb_baai_weight_bytes", "Bytes of each engine's weights in a worker, mapped from "
                             "files (shared by every process on the host) or private to it",
                             ["model", "backend", "memory"], multiprocess_mode="liveall", registry=r)
        self.version = Gauge("lancedb_baai_model_version", "Version of the model serving each id",
                             ["model"], multiprocess_mode="max", registry=r)

    def observe_weights(self, records: list[dict[str, Any]]) -> None:
        """Each engine's weight bytes in this worker: mapped from files (one copy per host) and private."""
        for record in records:
            for memory in ("mapped", "private"):
                self.weights.labels(record["model"], record["backend"], memory).set(
                    record.get(f"weights_{memory}_bytes") or 0)

    def observe_batch(self, model: str, requests: int, texts: int, passes: int) -> None:
        self.batch_requests.labels(model).observe(requests)
        self.batch_texts.labels(model).observe(texts)
        self.engine_calls.labels(model).inc()
        self.forward_passes.labels(model).inc(passes)

    def render(self) -> tuple[bytes, str]:
        """The exposition text (over all workers in multiprocess mode) and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry: Any = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn's ``child_exit`` hook)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
