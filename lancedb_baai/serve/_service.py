"""The serving core without HTTP: served models, their batchers, and the watcher that keeps them in step.

Routes call :class:`Service`; it holds, per served model id, a snapshot of what serves it
(:class:`Current`: the function object, its engine from the package's cache, the model
name and version). A swap builds a new snapshot while the old one keeps answering and
replaces it with one assignment, so every request runs on exactly one version. The set of
served ids is replaced the same way (a new dict, never one changed in place), so a load or
an unload never disturbs a request that is looking a model up.

The admin actions that change what is served live in :mod:`._admin`; this module applies
what the state file records, in every worker.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..engines import cache as _cache, kinds
from ..engines.history import History
from ..models import hub as _hub
from ._batcher import Batcher, Job
from ._metrics import Metrics
from ._settings import ModelOptions, ServeConfig
from ._state import StateStore

logger = logging.getLogger(__name__)

HISTORY_DEPTH = 8
"""Previous models recorded per id for rollback; only the latest one stays loaded."""


class ServeError(Exception):
    """A request the server refuses: HTTP status, error type, a message saying what to do, and details."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.detail = status, message, kind, detail or {}


@dataclass(frozen=True)
class Current:
    """What serves one model id right now."""

    fn: Any
    loaded: Any
    served: str
    version: int
    revision: str = ""
    load_s: float = 0.0
    """Seconds this process took to load it and run one warm-up call (an export on first use included)."""

    @property
    def engine(self) -> Any:
        return self.loaded.engine

    def header(self) -> str:
        return version_header(self.served, self.version)


def version_header(served: str, version: int) -> str:
    """What ``X-Model-Version`` says for ``served`` at ``version``."""
    return f"{quote(served, safe='/:._-')}@{version}"


class ServedModel:
    """One served model id: its options, its current snapshot and its batcher."""

    def __init__(self, options: ModelOptions, config: ServeConfig, metrics: Metrics) -> None:
        self.options, self.id, self.kind = options, options.id, options.kind
        self.metrics = metrics
        self.current: Current | None = None
        self.batcher = Batcher(
            self.id, enabled=config.micro_batching, wait_s=config.batch_wait_ms / 1000,
            max_queue=config.max_queue, batch_size=options.batch_size, max_tokens=config.max_batch_tokens,
            observe=lambda requests, texts, passes: metrics.observe_batch(self.id, requests, texts, passes))

    def function(self, served: str) -> Any:
        """The package's function object (configuration only) for serving ``served`` with these options."""
        return kinds.get(self.kind).function()(name=served, show_progress=False, **self.options.engine_options())

    def load(self, served: str, version: int) -> Current:
        """A warm snapshot serving ``served`` (loaded through the package's cache; not installed)."""
        fn = self.function(served)
        start = time.perf_counter()
        before = _cache.CACHE.total_loads()
        loaded = fn.loaded()
        engine = loaded.engine
        if kinds.get(self.kind).makes_vectors:
            engine.encode(["warm-up"], normalize=True)
        else:
            engine.score("warm-up", ["warm-up"])
        self.metrics.loads.labels(self.id).inc(_cache.CACHE.total_loads() - before)
        return Current(fn, loaded, served, version, _revision(served, fn.revision), time.perf_counter() - start)

    def install(self, current: Current) -> None:
        self.current = current
        self.metrics.version.labels(self.id).set(current.version)

    def close(self) -> None:
        """Take no new requests, answer the queued ones, then let go of the engine."""
        self.batcher.stop()
        self.current = None

    def record(self) -> dict[str, Any]:
        cur = self.current
        engine = cur.engine if cur else None
        return {
            "id": self.id, "kind": self.kind, "name": self.options.name, "served": cur.served if cur else None,
            "version": cur.version if cur else None, "dims": getattr(engine, "dims", None),
            "max_length": getattr(engine, "max_length", None),
            "forward_passes": getattr(engine, "forward_passes", 0), "engine_calls": self.batcher.calls,
            "requests": self.batcher.requests, "queue_depth": self.batcher.depth(),
        }

    def info(self) -> dict[str, Any]:
        """This model as text-embeddings-inference's ``/info`` describes one."""
        cur = self.current
        key = cur.engine.key if cur else None
        return {"model_id": self.id, "kind": self.kind,
                "model_type": "embedding" if kinds.get(self.kind).makes_vectors else "reranker",
                "served": cur.served if cur else None, "model_version": cur.version if cur else None,
                "model_sha": cur.revision if cur else None, "model_dtype": key.dtype if key else None,
                "model_device": key.device if key else None,
                "max_input_length": getattr(cur.engine, "max_length", None) if cur else None,
                "dims": getattr(cur.engine, "dims", None) if cur else None}


class Service:
    """Everything a server process serves; built once (before any fork), started in each worker."""

    def __init__(self, config: ServeConfig, store: StateStore | None = None) -> None:
        """``store`` is where the served state is recorded: the state directory's file unless given
        (:mod:`lancedb_baai.serve.ray` passes one kept in the Ray cluster)."""
        self.config = config
        self.metrics = Metrics()
        self.store = StateStore(config.state_dir) if store is None else store
        self.ready = False
        self.started = False
        self.lock = threading.RLock()  # one change of what is served at a time in this process
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._doomed: list[weakref.ref] = []  # released engines that requests in flight may still hold
        self._acknowledged: tuple[int, int, float] = (0, -1, 0.0)  # pid, generation, when first acknowledged
        state = self.store.read()
        self.generation = state["generation"]
        models = {}
        for options in self.wanted(state).values():
            model = ServedModel(options, config, self.metrics)
            model.install(self._load_recorded(model, state["models"].get(model.id, {})))
            models[model.id] = model
        self.models: dict[str, ServedModel] = models

    def wanted(self, state: dict[str, Any]) -> dict[str, ModelOptions]:
        """What ``state`` says to serve: the command line's models less those unloaded, plus those loaded."""
        removed = set(state.get("removed", []))
        wanted = {m.id: m for m in self.config.models if m.id not in removed}
        for model_id, entry in state["models"].items():
            if "options" in entry:
                wanted[model_id] = ModelOptions(**entry["options"])
        return wanted

    def _load_recorded(self, model: ServedModel, entry: dict[str, Any]) -> Current:
        served, version = entry.get("served", model.options.name), entry.get("version", 0)
        if served != model.options.name or "options" in entry:
            logger.info("%r: serving %r (version %d), recorded in %s", model.id, served, version, self.store.path)
        try:
            return model.load(served, version)
        except Exception as exc:
            raise RuntimeError(f"{model.id!r}: the recorded model {served!r} (version {version}) in "
                               f"{self.store.path} does not load: {exc}. Restore it, or move the state "
                               "file away to serve the models on the command line") from exc

    # ------------------------------------------------------------------ process lifecycle

    def start(self) -> None:
        """Start the batchers and the state watcher in this process (after any fork)."""
        self._stop.clear()
        for model in self.models.values():
            model.batcher.start()
        self.started = True
        self.store.changed()  # remember the file as it is now
        self.apply(self.store.read())  # a worker forked before the last swap catches up here
        self.settle()
        if self.store.directory is not None:
            self._watcher = threading.Thread(target=self._watch, name="state-watcher", daemon=True)
            self._watcher.start()
        self.ready = True

    def stop(self) -> None:
        """Finish the queued requests, stop the threads, release the engines."""
        self.ready = False
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for model in self.models.values():
            model.batcher.stop()
        self.started = False
        self.store.forget_worker(os.getpid())
        from ..lifecycle import release

        release()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.watch_interval_s):
            try:
                if self.store.changed():
                    self.apply(self.store.read())
                    self.settle()
            except Exception:
                logger.exception("could not apply %s; still serving what was served", self.store.path)

    def apply(self, state: dict[str, Any]) -> None:
        """Serve what ``state`` records, loading what this process lacks; then acknowledge it."""
        with self.lock:
            wanted = self.wanted(state)
            for model in [m for m in self.models.values() if m.id not in wanted]:
                self.remove(model, state)
                logger.info("%r: unloaded, as the state file records", model.id)
            for model_id, options in wanted.items():
                self._follow(model_id, options, state)
            self.generation = max(self.generation, state["generation"])
            self.acknowledge()

    def _follow(self, model_id: str, options: ModelOptions, state: dict[str, Any]) -> None:
        """Load ``model_id`` as ``state`` records it, if this process serves something else (or nothing)."""
        entry = state["models"].get(model_id)
        model = self.models.get(model_id)
        cur = model.current if model else None
        if model is not None and (entry is None or cur is None or
                                  (entry["served"], entry["version"]) == (cur.served, cur.version)):
            return
        entry = entry or {}
        served, version = entry.get("served", options.name), entry.get("version", 0)
        fresh = model is None
        model = model or ServedModel(options, self.config, self.metrics)
        try:
            current = model.load(served, version)
        except Exception:
            logger.exception("%r: could not load %r from the state file; still serving %r",
                             model_id, served, cur.served if cur else "nothing under that id")
            return
        self.add(model, current) if fresh else model.install(current)
        logger.info("%r: now serving %r (version %d) from the state file", model_id, served, version)
        self.release_unused(state)

    def add(self, model: ServedModel, current: Current) -> None:
        """Start serving ``model`` (loaded and warm) under its id."""
        model.install(current)
        if self.started:
            model.batcher.start()
        self.models = {**self.models, model.id: model}

    def remove(self, model: ServedModel, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Stop serving ``model``: new requests get 404, queued ones are answered, its engines released."""
        self.models = {k: m for k, m in self.models.items() if k != model.id}
        model.close()
        return self.release_unused(state)

    def release_unused(self, state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Release every engine no served id uses, except the one each id's rollback would return to."""
        entries = (state or self.store.read())["models"]
        keep = set()
        for model in self.models.values():
            names = [model.current.served] if model.current else []
            names += History.of_entry(entries.get(model.id), model.options.name).previous[-1:]
            keep |= {(kinds.get(model.kind).group, _hub.model_id(name)) for name in names}
        def unused(key: Any) -> bool:
            return (kinds.get(key.kind).group, key.model) not in keep

        self._doomed += [weakref.ref(engine) for key, engine in _cache.CACHE.engines() if unused(key)]
        return _cache.CACHE.release(unused)

    def settle(self) -> None:
        """Wait for the requests in flight on released engines, then give their memory back.

        Call it after letting go of :attr:`lock` and the state file lock: draining a full queue
        takes seconds under load, and only the caller should wait for it, never the requests,
        the other workers or the next admin action.
        """
        with self.lock:
            doomed, self._doomed = self._doomed, []
        _settle(doomed)

    def acknowledge(self) -> None:
        """Record in the state directory what this worker now serves (the admin routes show it).

        ``time`` is when this process first acknowledged this generation: acknowledging again
        (a replica told of a change it made itself) does not move it.
        """
        if self._acknowledged[:2] != (os.getpid(), self.generation):
            self._acknowledged = (os.getpid(), self.generation, time.time())
        self.store.acknowledge({"pid": os.getpid(), "generation": self.generation,
                                "load_count": _cache.CACHE.total_loads(),
                                "served": {m.id: m.current.header() for m in self.models.values() if m.current},
                                "load_s": {m.id: round(m.current.load_s, 3) for m in self.models.values()
                                           if m.current},
                                "time": self._acknowledged[2]})

    def problems(self) -> list[str]:
        """Why this process cannot serve now (empty when it can): what a health check reports."""
        found = [] if self.ready else ["not ready: models are loading or the server is stopping"]
        found += [f"the batcher of {m.id!r} has stopped" for m in self.models.values() if not m.batcher.alive()]
        return found

    # ------------------------------------------------------------------ requests

    def model(self, model_id: str | None, kind: str) -> ServedModel:
        """The served model a request names; with none named, the only one of that kind."""
        models = self.models
        of_kind = [m for m in models.values() if m.kind == kind]
        if model_id is None:
            if len(of_kind) == 1:
                return of_kind[0]
            raise ServeError(422 if of_kind else 404, f"{len(of_kind)} {kind} models are served; name one "
                             f"in 'model': {[m.id for m in of_kind]}", "invalid_request_error")
        model = models.get(model_id)
        if model is None or model.kind != kind:
            raise ServeError(404, f"model {model_id!r} is not served for {kind}; served: "
                                  f"{[m.id for m in of_kind]}", "model_not_found")
        return model

    def submit(self, model: ServedModel, texts: list[str], query: str | None = None,
               normalize: bool = True, truncate: bool = True) -> tuple[Future, Current]:
        """Queue one request on the model's current engine; returns its future and that snapshot."""
        current = model.current
        if current is None:
            raise ServeError(404, f"model {model.id!r} was unloaded and is no longer served", "model_not_found")
        future = model.batcher.submit(Job(current.engine, texts, query, normalize, truncate))
        model.metrics.queue_depth.labels(model.id).set(model.batcher.depth())
        return future, current

    def engines(self) -> dict[str, Any]:
        """This process's view: models, cache records, load count, and what every worker applied."""
        return {"pid": os.getpid(), "generation": self.generation, "load_count": _cache.CACHE.total_loads(),
                "models": [m.record() for m in self.models.values()], "cache": _cache.CACHE.info(),
                "workers": self.store.workers()}


def _settle(doomed: list[weakref.ref], timeout_s: float = 10.0) -> None:
    """Wait for requests still holding a released engine to finish, then return its memory.

    The cache lets go of an engine at once, but a request in flight holds its snapshot until
    it answers; memory freed after the cache's ``malloc_trim`` would stay with the process.
    """
    start = time.monotonic()
    collected = start - 1.0
    while any(ref() is not None for ref in doomed) and time.monotonic() - start < timeout_s:
        if time.monotonic() - collected >= 1.0:  # a snapshot caught in a cycle needs a collection;
            gc.collect()                          # one every few ms would starve the serving threads
            collected = time.monotonic()
        time.sleep(0.05)
    if doomed:
        gc.collect()
        held = sum(ref() is not None for ref in doomed)
        if held:
            logger.warning("%d released engine(s) still held by requests after %.0f s; their memory "
                           "comes back when those requests finish", held, timeout_s)
        _cache.free_memory()


def _revision(served: str, revision: str | None) -> str:
    """The hub revision a model was loaded at, else a content fingerprint of its directory."""
    from ._weights import fingerprint

    path = _hub.resolve(served, revision)
    if path.parent.name == "snapshots":  # a hub cache snapshot: the directory is the commit
        return path.name
    return fingerprint(path)
