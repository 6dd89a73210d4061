"""Micro-batching: requests for one served model merged into shared forward passes.

One bounded queue and one worker thread per served model. The worker takes the first
waiting request, then keeps collecting for at most ``wait_s`` or until the collected texts
fill the token budget of :mod:`lancedb_baai.engines.batching`, runs one engine call per group of
compatible requests (same engine, same options; for rerank also the same query) and
answers each request with its own slice. The engine call plans its forward passes by
token length as any library call does. A full queue is refused at once (the route answers
503 with Retry-After), so a burst never becomes an unbounded backlog.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engines.batching import MAX_BATCH_TOKENS

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue of a served model is full; the client should retry later."""


class Closed(Exception):
    """The served model was unloaded after the request found it; it takes no more requests."""


class TooLong(ValueError):
    """An input exceeds the model's token limit and the request asked not to truncate."""


@dataclass
class Job:
    """One request's work: embed ``texts``, or score them against ``query`` (rerank).

    Its future gets ``(vectors or scores, tokens counted)``.
    """

    engine: Any
    texts: list[str]
    query: str | None = None
    normalize: bool = True
    truncate: bool = True
    future: Future = field(default_factory=Future)
    tokens: int = 0

    def group(self) -> tuple:
        return (id(self.engine), self.query, self.normalize)


class Batcher:
    """The queue and worker thread of one served model. Start after any fork, stop on shutdown."""

    def __init__(self, name: str, *, enabled: bool, wait_s: float, max_queue: int,
                 batch_size: int, max_tokens: int | None = None,
                 observe: Callable[[int, int, int], None] | None = None) -> None:
        self.name = name
        self.enabled = enabled
        self.wait_s = wait_s
        self.batch_size = batch_size
        self.max_tokens = max_tokens or MAX_BATCH_TOKENS
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._observe = observe or (lambda requests, texts, passes: None)
        self._thread: threading.Thread | None = None
        self._closing = threading.Lock()  # no job may be queued behind the stop marker
        self._closed = False
        self.calls = 0
        self.requests = 0

    def start(self) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker thread; later submissions raise :class:`Closed`."""
        with self._closing:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)

    def depth(self) -> int:
        return self._queue.qsize()

    def alive(self) -> bool:
        """True while the worker thread runs (a health check asks)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(self, job: Job) -> Future:
        """Queue ``job``; raises :class:`Overloaded` when the queue is full."""
        with self._closing:
            if self._closed:
                raise Closed(f"model {self.name!r} was unloaded and is no longer served")
            if self._thread is None:
                raise RuntimeError(f"the batcher of {self.name!r} is not running")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Overloaded(f"{self.depth()} requests are waiting for {self.name!r}") from None
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self._execute(jobs)
            del first, jobs  # the jobs hold their engine: a swapped-out one must be free to go
            if stop:
                return

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The first job and whatever joins it within the wait and the token budget."""
        jobs = [j for j in (first,) if self._count(j)]
        tokens = sum(j.tokens for j in jobs)
        deadline = time.perf_counter() + self.wait_s
        while self.enabled and tokens < self.max_tokens:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if self._count(job):
                jobs.append(job)
                tokens += job.tokens
        return jobs, False

    def _count(self, job: Job) -> bool:
        """Count the job's tokens (for the budget and ``usage``); False if it failed the length check."""
        try:
            pair = [job.query] * len(job.texts) if job.query is not None else None
            lengths = job.engine.token_counts(job.texts, pair_with=pair)
            limit = job.engine.max_length
            if not job.truncate and lengths and max(lengths) > limit:
                row = int(np.argmax(lengths))
                raise TooLong(f"text at row {row} is {lengths[row]} tokens, over the model's limit of "
                              f"{limit}; shorten it or send truncate=true")
            job.tokens = sum(min(n, limit) for n in lengths)
            return True
        except Exception as exc:  # reported to that request only
            _fail(job, exc)
            return False

    def _execute(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.group(), []).append(job)
        for group in groups.values():
            self._run_group(group)

    def _run_group(self, jobs: list[Job]) -> None:
        engine = jobs[0].engine
        texts = [t for job in jobs for t in job.texts]
        before = engine.forward_passes
        try:
            if jobs[0].query is None:
                out = engine.encode(texts, normalize=jobs[0].normalize, batch_size=self.batch_size)
            else:
                out = engine.score(jobs[0].query, texts, normalize=jobs[0].normalize, batch_size=self.batch_size)
        except Exception as exc:
            logger.exception("engine call for %r failed", self.name)
            for job in jobs:
                _fail(job, exc)
            return
        self.calls += 1
        self.requests += len(jobs)
        self._observe(len(jobs), len(texts), engine.forward_passes - before)
        start = 0
        for job in jobs:
            stop = start + len(job.texts)
            if job.future.set_running_or_notify_cancel():
                job.future.set_result((out[start:stop], job.tokens))
            start = stop


def _fail(job: Job, exc: BaseException) -> None:
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(exc)
