"""The serving core without HTTP: served models, their batchers, swaps, rollbacks and the watcher.

Routes call :class:`Service`; it holds, per served model id, a snapshot of what serves it
(:class:`Current`: the function object, its engine from the package's cache, the model
name and version). A swap builds a new snapshot while the old one keeps answering and
replaces it with one assignment, so every request runs on exactly one version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .. import _cache
from ._batcher import Batcher, Job
from ._metrics import Metrics
from ._settings import ModelOptions, ServeConfig
from ._state import StateStore

logger = logging.getLogger(__name__)

HISTORY_DEPTH = 8
"""Previous models recorded per id for rollback; only the latest one stays loaded."""


class ServeError(Exception):
    """A request the server refuses: HTTP status, error type and a message saying what to do."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class Current:
    """What serves one model id right now."""

    fn: Any
    engine: Any
    served: str
    version: int

    def header(self) -> str:
        return f"{quote(self.served, safe='/:._-')}@{self.version}"


class ServedModel:
    """One configured model id: its options, its current snapshot and its batcher."""

    def __init__(self, options: ModelOptions, config: ServeConfig, metrics: Metrics) -> None:
        self.options, self.id, self.kind = options, options.id, options.kind
        self.metrics = metrics
        self.current: Current | None = None
        self.batcher = Batcher(
            self.id, enabled=config.micro_batching, wait_s=config.batch_wait_ms / 1000,
            max_queue=config.max_queue, batch_size=options.batch_size, max_tokens=config.max_batch_tokens,
            observe=lambda requests, texts, passes: metrics.observe_batch(self.id, requests, texts, passes))

    def load(self, served: str, version: int) -> Current:
        """A warm snapshot serving ``served`` (loaded through the package's cache; not installed)."""
        fn = _function(self.kind)(name=served, show_progress=False, **self.options.engine_options())
        before = _cache.CACHE.total_loads()
        engine = fn.engine()
        if self.kind == "embed":
            engine.encode(["warm-up"], normalize=True)
        else:
            engine.score("warm-up", ["warm-up"])
        self.metrics.loads.labels(self.id).inc(_cache.CACHE.total_loads() - before)
        return Current(fn, engine, served, version)

    def install(self, current: Current) -> None:
        self.current = current
        self.metrics.version.labels(self.id).set(current.version)

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


class Service:
    """Everything a server process serves; built once (before any fork), started in each worker."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = StateStore(config.state_dir)
        self.models = {m.id: ServedModel(m, config, self.metrics) for m in config.models}
        self.ready = False
        self._lock = threading.RLock()  # one state change at a time in this process
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        state = self.store.read()
        self.generation = state["generation"]
        for model in self.models.values():
            entry = state["models"].get(model.id, {})
            model.install(self._load_recorded(model, entry))

    def _load_recorded(self, model: ServedModel, entry: dict[str, Any]) -> Current:
        served, version = entry.get("served", model.options.name), entry.get("version", 0)
        if served != model.options.name:
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
        self.store.changed()  # remember the file as it is now
        self.apply(self.store.read())  # a worker forked before the last swap catches up here
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
        self.store.forget_worker(os.getpid())
        from ..lifecycle import release

        release()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.watch_interval_s):
            try:
                if self.store.changed():
                    self.apply(self.store.read())
            except Exception:
                logger.exception("could not apply %s; still serving what was served", self.store.path)

    def apply(self, state: dict[str, Any]) -> None:
        """Serve what ``state`` records, loading what this process lacks; then acknowledge it."""
        with self._lock:
            for model in self.models.values():
                entry = state["models"].get(model.id)
                cur = model.current
                if entry is None or cur is None or (entry["served"], entry["version"]) == (cur.served, cur.version):
                    continue
                try:
                    model.install(model.load(entry["served"], entry["version"]))
                    logger.info("%r: now serving %r (version %d) from the state file",
                                model.id, entry["served"], entry["version"])
                    self._trim(model, entry)
                except Exception:
                    logger.exception("%r: could not load %r from the state file; still serving %r",
                                     model.id, entry["served"], cur.served)
            self.generation = max(self.generation, state["generation"])
            self._acknowledge()

    def _acknowledge(self) -> None:
        self.store.acknowledge({"pid": os.getpid(), "generation": self.generation,
                                "load_count": _cache.CACHE.total_loads(),
                                "served": {m.id: m.current.header() for m in self.models.values() if m.current},
                                "time": time.time()})

    # ------------------------------------------------------------------ requests

    def model(self, model_id: str | None, kind: str) -> ServedModel:
        """The served model a request names; with none named, the only one of that kind."""
        of_kind = [m for m in self.models.values() if m.kind == kind]
        if model_id is None:
            if len(of_kind) == 1:
                return of_kind[0]
            raise ServeError(422, f"several {kind} models are served; name one in 'model': "
                                  f"{[m.id for m in of_kind]}")
        model = self.models.get(model_id)
        if model is None or model.kind != kind:
            raise ServeError(404, f"model {model_id!r} is not served for {kind}; served: "
                                  f"{[m.id for m in of_kind]}", "model_not_found")
        return model

    def submit(self, model: ServedModel, texts: list[str], query: str | None = None,
               normalize: bool = True, truncate: bool = True) -> tuple[Future, Current]:
        """Queue one request on the model's current engine; returns its future and that snapshot."""
        current = model.current
        assert current is not None
        future = model.batcher.submit(Job(current.engine, texts, query, normalize, truncate))
        model.metrics.queue_depth.labels(model.id).set(model.batcher.depth())
        return future, current

    # ------------------------------------------------------------------ admin

    def swap(self, model_id: str, kind: str | None, new: str, allow_dims_change: bool = False) -> dict[str, Any]:
        """Serve ``model_id`` from ``new``, here at once and in every worker through the state file."""
        with self._lock, self.store.locked():
            state = self.store.read()
            self.apply(state)
            model = self._admin_model(model_id, kind)
            cur = model.current
            assert cur is not None
            try:
                candidate = model.load(new, cur.version + 1)
            except Exception as exc:
                raise ServeError(400, f"swap failed, still serving {cur.served!r}: {exc}", "swap_failed") from exc
            if model.kind == "embed" and candidate.engine.dims != cur.engine.dims and not allow_dims_change:
                self._drop(model, candidate.served)
                raise ServeError(409, f"swap refused, still serving {cur.served!r}: {new!r} makes "
                                      f"{candidate.engine.dims}-d vectors, {cur.served!r} makes "
                                      f"{cur.engine.dims}-d ones. Send allow_dims_change=true if the "
                                      "tables will be re-embedded", "dims_changed")
            entry = state["models"].get(model.id, {})
            history = [*entry.get("history", []), cur.served][-HISTORY_DEPTH:]
            return self._commit(state, model, candidate, history, "swap")

    def rollback(self, model_id: str, kind: str | None = None) -> dict[str, Any]:
        """Serve ``model_id`` from the model it had before the last swap (recorded, so across restarts)."""
        with self._lock, self.store.locked():
            state = self.store.read()
            self.apply(state)
            model = self._admin_model(model_id, kind)
            cur = model.current
            assert cur is not None
            history = list(state["models"].get(model.id, {}).get("history", []))
            if not history:
                raise ServeError(409, f"nothing to roll back for {model.id!r}: it was never swapped",
                                 "nothing_to_roll_back")
            try:
                candidate = model.load(history.pop(), cur.version + 1)
            except Exception as exc:
                raise ServeError(400, f"rollback failed, still serving {cur.served!r}: {exc}",
                                 "rollback_failed") from exc
            return self._commit(state, model, candidate, history, "rollback")

    def _admin_model(self, model_id: str, kind: str | None) -> ServedModel:
        model = self.models.get(model_id)
        if model is None:
            raise ServeError(404, f"model {model_id!r} is not served; served: {list(self.models)}",
                             "model_not_found")
        if kind is not None and kind != model.kind:
            raise ServeError(422, f"{model_id!r} is a {model.kind} model, not {kind}; send kind={model.kind!r}")
        return model

    def _commit(self, state: dict[str, Any], model: ServedModel, candidate: Current,
                history: list[str], action: str) -> dict[str, Any]:
        entry = {"served": candidate.served, "version": candidate.version, "history": history}
        state["models"][model.id] = entry
        written = self.store.write(state)  # a failed write raises before anything is served
        previous = model.current
        model.install(candidate)
        self.generation = written["generation"]
        self._trim(model, entry)
        self.store.changed()  # this process has applied its own write
        self._acknowledge()
        logger.info("%s %r: %r -> %r (version %d, generation %d)", action, model.id,
                    previous.served if previous else None, candidate.served, candidate.version, self.generation)
        return {**model.record(), "previous": previous.served if previous else None,
                "generation": self.generation}

    def _trim(self, model: ServedModel, entry: dict[str, Any]) -> None:
        """Keep the served engines and the one a rollback would return to; release older ones."""
        from .. import _hub

        keep = {entry["served"], *entry.get("history", [])[-1:]}
        keep |= {m.current.served for m in self.models.values() if m.current}
        keep_ids = {_hub.model_id(name) for name in keep}
        for record in _cache.CACHE.info():
            if record["kind"] in _kinds(model.kind) and record["model"] not in keep_ids:
                self._drop(model, record["model"])

    def _drop(self, model: ServedModel, name: str) -> None:
        """Release ``name``'s engines of this model's kind unless some id serves it."""
        from .. import _hub

        target = _hub.model_id(name)
        if any(m.current and _hub.model_id(m.current.served) == target for m in self.models.values()):
            return
        _cache.CACHE.release(lambda key: key.model == target and key.kind in _kinds(model.kind))

    def engines(self) -> dict[str, Any]:
        """This process's view: models, cache records, load count, and what every worker applied."""
        return {"pid": os.getpid(), "generation": self.generation, "load_count": _cache.CACHE.total_loads(),
                "models": [m.record() for m in self.models.values()], "cache": _cache.CACHE.info(),
                "workers": self.store.workers()}


def _function(kind: str) -> type:
    if kind == "embed":
        from ..embeddings import BAAIEmbeddings

        return BAAIEmbeddings
    from ..reranker import BAAIRerankFunction

    return BAAIRerankFunction


def _kinds(kind: str) -> set[str]:
    """Engine kinds a served kind may run on: bge-m3 embeds on the "m3" engine."""
    return {kind, "m3"} if kind == "embed" else {kind}
