"""The admin actions: swap, rollback, load and unload, one per model at a time, within a memory budget.

Each action holds its model (in every worker, through :meth:`StateStore.busy`) for as long
as it runs, so a second action on that model is refused with 409 instead of queueing
behind it. A candidate engine is checked (readable directory, memory budget) and loaded
warm while the served models keep answering; only then is the state file written, under
its lock, and the change installed here. The other workers apply the file as they do a
swap. Anything that fails before the write changes nothing: not what is served, not the file.
A swap or rollback of an embedder answers with the tables it affects (``--table``, :mod:`._tables`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from ..engines import cache as _cache
from ..models import hub as _hub
from ..engines import kinds
from ..engines.history import History, NothingToRollBack
from ._service import HISTORY_DEPTH, Current, ServedModel, ServeError, Service
from ._settings import ModelOptions
from . import _tables
from ._state import Busy
from ._weights import bytes_on_disk, engine_bytes, rss

logger = logging.getLogger(__name__)


class Admin:
    """The admin actions of one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config

    # ------------------------------------------------------------------ actions

    def swap(self, model_id: str, kind: str | None, new: str, allow_dims_change: bool = False) -> dict[str, Any]:
        """Serve ``model_id`` from ``new``, here at once and in every worker through the state file."""
        with self._busy(model_id, "swap"):
            model = self._served(model_id, kind)
            serving, version = model.current.served, model.current.version  # not the snapshot: see _busy
            dims = getattr(model.current.engine, "dims", None)
            candidate = self._candidate(model, new, version + 1, f"swap failed, still serving {serving!r}")
            if kinds.get(model.kind).makes_vectors and candidate.engine.dims != dims and not allow_dims_change:
                self.service.release_unused()
                raise ServeError(409, f"swap refused, still serving {serving!r}: {new!r} makes "
                                      f"{candidate.engine.dims}-d vectors, {serving!r} makes "
                                      f"{dims}-d ones. Send allow_dims_change=true if the "
                                      "tables will be re-embedded", "dims_changed")

            def entry(state: dict[str, Any]) -> dict[str, Any]:
                recorded = History.of_entry(state["models"].get(model.id), serving)
                return History(serving, version, recorded.previous).swapped(new, HISTORY_DEPTH).entry()

            return self._commit(model, candidate, entry)

    def rollback(self, model_id: str, kind: str | None = None) -> dict[str, Any]:
        """Serve ``model_id`` from the model it had before the last swap (recorded, so across restarts)."""
        with self._busy(model_id, "rollback"):
            model = self._served(model_id, kind)
            serving, version = model.current.served, model.current.version  # not the snapshot: see _busy
            recorded = History.of_entry(self.service.store.read()["models"].get(model.id), serving)
            try:
                back = History(serving, version, recorded.previous).rolled_back(repr(model.id))
            except NothingToRollBack as exc:
                raise ServeError(409, str(exc), "nothing_to_roll_back") from None
            candidate = self._candidate(model, back.served, back.version,
                                        f"rollback failed, still serving {serving!r}")

            def entry(state: dict[str, Any]) -> dict[str, Any]:
                return back.entry()

            return self._commit(model, candidate, entry)

    def load(self, options: ModelOptions) -> dict[str, Any]:
        """Start serving a model that is not served yet; it shows in /v1/models once loaded and warm."""
        with self._busy(options.id, "load"):
            self._catch_up()
            existing = self.service.models.get(options.id)
            if existing is not None:
                raise ServeError(409, f"{options.id!r} is already served ({existing.kind}: "
                                      f"{existing.current.served if existing.current else None}); unload it "
                                      "first, or swap it to another model", "already_served")
            model = ServedModel(options, self.config, self.service.metrics)
            candidate = self._candidate(model, options.name, 0, f"load of {options.id!r} failed, nothing changed")

            def entry(state: dict[str, Any]) -> dict[str, Any]:
                state["removed"] = [i for i in state.get("removed", []) if i != options.id]
                return {**History(options.name).entry(), "options": options.model_dump()}

            return self._commit(model, candidate, entry)

    def unload(self, model_id: str) -> dict[str, Any]:
        """Stop serving ``model_id``: 404 for new requests, queued ones answered, its engines released."""
        with self._busy(model_id, "unload"):
            service = self.service
            model = self._served(model_id, None)  # busy: no other action changes it meanwhile
            before = model.record()
            with service.lock, service.store.locked():
                state = service.store.read()
                state["models"].pop(model_id, None)
                if model_id in {m.id for m in self.config.models}:
                    state["removed"] = sorted({*state.get("removed", []), model_id})
                written = service.store.write(state)
                service.generation = written["generation"]
                released = service.remove(model, written)
                service.store.changed()
                service.acknowledge()
            return {**before, "unloaded": True, "released": released, "generation": service.generation,
                    "rss_bytes": rss()}

    # ------------------------------------------------------------------ steps

    @contextmanager
    def _busy(self, model_id: str, action: str) -> Iterator[None]:
        """Hold ``model_id``'s admin lock for ``action``; at the end, wait for the engines it released.

        The actions keep names and versions, never a served snapshot, in their locals: a
        snapshot held here would keep a released engine alive for the whole wait.
        """
        try:
            with self.service.store.busy(model_id, action):
                try:
                    yield
                finally:
                    self.service.settle()
        except Busy as exc:
            raise _busy_error(model_id, action, exc.record) from None

    def _catch_up(self) -> None:
        """Apply what other workers recorded, so the action starts from what every worker serves."""
        with self.service.lock, self.service.store.locked():
            self.service.apply(self.service.store.read())

    def _served(self, model_id: str, kind: str | None) -> ServedModel:
        self._catch_up()
        model = self.service.models.get(model_id)
        if model is None or model.current is None:
            raise ServeError(404, f"model {model_id!r} is not served; served: {list(self.service.models)}",
                             "model_not_found")
        if kind is not None and kind != model.kind:
            raise ServeError(422, f"{model_id!r} is a {model.kind} model, not {kind}; send kind={model.kind!r}")
        return model

    def _candidate(self, model: ServedModel, name: str, version: int, failed: str) -> Current:
        """``name`` loaded warm for ``model``, after the readability and budget checks; not installed."""
        try:
            _check_readable(name)
            self._check_budget(model, name)
            return model.load(name, version)
        except ServeError:
            raise
        except Exception as exc:
            self.service.release_unused()
            raise ServeError(400, f"{failed}: {exc}", load_error_kind(exc), {"model_path": name}) from exc

    def _commit(self, model: ServedModel, candidate: Current,
                entry: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Record the change (the next generation), then serve ``candidate`` here."""
        service = self.service
        affected = self._affected_tables(model, candidate)  # before the locks: it opens tables
        with service.lock, service.store.locked():
            state = service.store.read()
            state["models"][model.id] = entry(state)
            written = service.store.write(state)  # a failed write raises before anything is served
            previous = model.current.served if model.current else None
            if model.id in service.models:
                model.install(candidate)
            else:
                service.add(model, candidate)
            service.generation = written["generation"]
            service.release_unused(written)
            service.store.changed()  # this process has applied its own write
            service.acknowledge()
        record = {**model.record(), "previous": previous, "generation": service.generation, "rss_bytes": rss()}
        if affected is not None:
            record["affected_tables"] = affected
        return record

    def _affected_tables(self, model: ServedModel, candidate: Current) -> list[dict[str, Any]] | None:
        """For an embedder served until now: the ``--table`` columns its vectors fill that ``candidate``'s would not."""
        if model.current is None or not kinds.get(model.kind).makes_vectors:
            return None
        return _tables.affected(self.config.tables, model.current.loaded, candidate.loaded)

    # ------------------------------------------------------------------ memory

    def _check_budget(self, model: ServedModel, name: str) -> None:
        """Refuse (409, with the figures) a model whose weights would take the process over budget."""
        budget = self.config.memory_budget
        if budget is None:
            return
        key = model.function(name).engine_key()
        held = _cache.CACHE.engines()
        if any(k == key for k, _ in held):
            return  # already in memory: serving it takes nothing more
        held_bytes = sum(engine_bytes(e) for e in {id(e): e for _, e in held}.values())
        new_bytes = bytes_on_disk(_hub.resolve(name), key.dtype)
        if held_bytes + new_bytes > budget:
            figures = {"budget_bytes": budget, "held_bytes": held_bytes, "new_bytes": new_bytes,
                       "total_bytes": held_bytes + new_bytes}
            raise ServeError(409, f"{name!r} needs {_mib(new_bytes)} as {key.dtype}; the engines held take "
                                  f"{_mib(held_bytes)}, so {_mib(held_bytes + new_bytes)} in all, over the "
                                  f"memory budget of {_mib(budget)} (--memory-budget). Unload a model first, "
                                  "or raise the budget; nothing changed", "over_memory_budget", figures)

    def memory(self) -> dict[str, Any]:
        """Each engine this process holds with its weight bytes, the budget, and the process RSS."""
        engines = [{"model": key.model, "kind": key.kind, "device": key.device, "dtype": key.dtype,
                    "max_length": key.max_length, "weight_bytes": engine_bytes(engine),
                    **engine.session.weight_memory().record()}
                   for key, engine in _cache.CACHE.engines()]
        return {"rss_bytes": rss(), "budget_bytes": self.config.memory_budget,
                "weight_bytes": sum(e["weight_bytes"] for e in engines), "engines": engines}


def _check_readable(name: str) -> None:
    """A local model directory this process cannot read is refused before anything is loaded."""
    if not _hub.is_local(name):
        return
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist; pass a directory that holds "
                                "the model's config.json, or a hub id")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"model directory {path!r} cannot be read by this server (uid {os.getuid()}): "
                              "make it readable (chmod -R a+rX) or pass another directory")


def load_error_kind(exc: Exception) -> str:
    """The error type a failed load answers with: what a client can act on."""
    if isinstance(exc, PermissionError):
        return "model_unreadable"
    if isinstance(exc, (FileNotFoundError, _hub.ModelNotAvailableError)):
        return "model_path_not_found"
    if isinstance(exc, _hub.WrongModelError):
        return "wrong_model_kind"
    if isinstance(exc, (_hub.BrokenModelError, ValueError)):
        return "broken_model"
    return "load_failed"


def _busy_error(model_id: str, action: str, running: dict[str, Any]) -> ServeError:
    since = running.get("since")
    when = (f"since {datetime.fromtimestamp(since, timezone.utc).isoformat(timespec='seconds')}, "
            f"{time.time() - since:.1f}s ago" if since else "started just now")
    detail = {"running": {**running, "since": datetime.fromtimestamp(since, timezone.utc).isoformat()
                          if since else None}}
    return ServeError(409, f"{action} of {model_id!r} refused: {running.get('action')} of {model_id!r} is "
                           f"running ({when}, pid {running.get('pid')}); one admin action per model at a "
                           "time, retry when it has finished", "admin_action_running", detail)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
