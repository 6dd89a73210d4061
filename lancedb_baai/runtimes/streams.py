"""OpenVINO's CPU streams: a pool of infer requests, so bulk work keeps every stream busy.

A compiled model with several streams runs several infer requests at once, each on its
own share of the threads. :class:`Requests` holds one request per stream: a call takes a
free one (calls from several threads run side by side, up to the number of streams, and
wait beyond it), and :meth:`Requests.map` keeps every request busy on a stream of
batches, in order, while the caller pads the next batch.

How many (docs/performance.md, "Streams"; measured on 2-core CPUs of both classes): on an
otherwise idle host one stream of every thread embeds and reranks as fast as two streams of
one thread and answers a short query 1.6x sooner, so a process has one stream. With a core
taken by something else, two streams ran bulk and rerank about 1.5x faster (a pool of two
threads waits at every barrier for the one whose core is taken), so the processes that only
run bulk work or concurrent requests (the server, Ray actors) ask for two with
:func:`throughput_by_default`. :data:`STREAMS_ENV` overrides both.
"""

from __future__ import annotations

import collections
import os
import queue
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .base import Feeds

STREAMS_ENV = "LANCEDB_BAAI_STREAMS"
"""Streams per compiled OpenVINO model: a count (at most one per thread); unset, one."""
THROUGHPUT_STREAMS = 2
"""What servers and Ray actors ask for: beyond two, each stream's threads fall below what a short query uses well."""


def streams(threads: int) -> int:
    """How many streams a compiled model gets with ``threads`` threads in all."""
    configured = os.environ.get(STREAMS_ENV, "").strip()
    if not configured:
        return 1
    try:
        count = int(configured)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"${STREAMS_ENV}={configured!r}: give a count of streams of 1 or more, or unset it for one")
    return max(1, min(count, threads))


def throughput_by_default() -> None:
    """Give the OpenVINO models this process compiles from now on :data:`THROUGHPUT_STREAMS` streams.

    For processes whose calls are bulk work or concurrent requests: the server's workers, Ray
    Serve replicas, Ray Data and re-embedding actors. A count the user set in
    :data:`STREAMS_ENV` stays.
    """
    os.environ.setdefault(STREAMS_ENV, str(THROUGHPUT_STREAMS))


def config(threads: int) -> dict[str, str]:
    """The CPU plugin's properties for ``threads`` threads shared by :func:`streams` streams."""
    count = streams(threads)
    hint = "LATENCY" if count == 1 else "THROUGHPUT"
    return {"PERFORMANCE_HINT": hint, "NUM_STREAMS": str(count), "INFERENCE_NUM_THREADS": str(threads)}


class Requests:
    """A compiled model's infer requests, one per stream; callable from any thread."""

    def __init__(self, compiled: Any, count: int) -> None:
        self.compiled, self.count = compiled, count
        self._outputs = len(compiled.outputs)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(compiled.create_infer_request())

    def __call__(self, feeds: Feeds) -> tuple[np.ndarray, ...]:
        request = self._free.get()
        try:
            request.infer(dict(feeds))
            return self._results(request)
        finally:
            self._free.put(request)

    def map(self, batches: Iterable[Feeds]) -> Iterator[tuple[np.ndarray, ...]]:
        """The outputs of each batch, in order, with up to :attr:`count` batches running at once.

        Callers in other threads share the requests: a caller that holds some takes another
        only if one is free, else it waits for its own oldest batch.
        """
        running: collections.deque = collections.deque()
        try:
            for feeds in batches:
                request = None
                while request is None:
                    try:  # holding none, wait for one; holding some, never wait (two callers would deadlock)
                        request = self._free.get(block=not running)
                    except queue.Empty:
                        yield self._finish(running.popleft())  # the oldest batch is done first anyway
                try:
                    request.start_async(dict(feeds))
                except BaseException:
                    self._free.put(request)
                    raise
                running.append(request)
            while running:
                yield self._finish(running.popleft())
        finally:
            for request in running:  # the caller stopped early, or a batch failed: hand the requests back
                request.wait()
                self._free.put(request)

    def _finish(self, request: Any) -> tuple[np.ndarray, ...]:
        try:
            request.wait()
            return self._results(request)
        finally:
            self._free.put(request)

    def _results(self, request: Any) -> tuple[np.ndarray, ...]:
        """The outputs, copied: the request's output tensors are overwritten by its next run."""
        return tuple(np.array(request.get_output_tensor(i).data, copy=True) for i in range(self._outputs))
