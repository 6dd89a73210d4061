"""The recorded state of a server: which model serves each configured name, and since when.

One JSON file, ``state.json`` in the state directory, holds a generation number and, per
served model id, the model now serving it, its version and the models it replaced (for
rollback). Every change is made under a file lock and written atomically (a temp file,
fsync, ``os.replace``), so a reader sees the old file or the new one, never half of one.

This file is the control path between workers: the worker that takes an admin request
writes it, every other worker polls its ``stat`` (a few microseconds) and applies a new
generation in its own process. A restarted server reads it and serves the last good models.
Each worker also writes what it has applied to ``workers/<pid>.json``, so the admin routes
can show whether a swap has reached every worker.

Besides swaps, the file records the models loaded at run time (their entry carries the
``options`` they were loaded with) and the command-line models unloaded (``removed``), so a
restart serves the same set. One admin action per model runs at a time, in every worker:
:meth:`StateStore.busy` holds ``admin/<model>.lock`` without waiting and writes what holds
it beside the lock, so a second action is refused at once with what runs and since when.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


class Busy(Exception):
    """Another admin action holds this model: ``record`` says which, since when and in which process."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.record = record


class StateStore:
    """``state.json`` in ``directory``, or the same interface in memory when there is none."""

    def __init__(self, directory: str | os.PathLike | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[str, Any] = _empty()
        self._thread_lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._busy: dict[str, dict[str, Any]] = {}
        self._busy_lock = threading.Lock()
        if self.directory is not None:
            (self.directory / "workers").mkdir(parents=True, exist_ok=True)
            (self.directory / "admin").mkdir(exist_ok=True)

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / STATE_FILE

    def read(self) -> dict[str, Any]:
        """The recorded state (generation 0 and no models when nothing was recorded yet)."""
        if self.path is None:
            return deepcopy(self._memory)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _empty()
        state = json.loads(text)
        if not isinstance(state, dict) or not isinstance(state.get("models"), dict):
            raise ValueError(f"{self.path} is not a lancedb_baai state file; move it away to start afresh")
        return state

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store for one admin action: across threads and, with a directory, across processes."""
        with self._thread_lock:
            if self.directory is None:
                yield
                return
            from filelock import FileLock

            with FileLock(str(self.directory / "state.lock")):
                yield

    @contextlib.contextmanager
    def busy(self, model_id: str, action: str) -> Iterator[None]:
        """Hold ``model_id`` for one admin action, or raise :class:`Busy` at once if one holds it."""
        record = {"action": action, "model": model_id, "since": time.time(), "pid": os.getpid()}
        with self._busy_lock:
            if model_id in self._busy:
                raise Busy(self._busy[model_id])
            self._busy[model_id] = record
        try:
            with self._file_busy(model_id, record):
                yield
        finally:
            with self._busy_lock:
                del self._busy[model_id]

    @contextlib.contextmanager
    def _file_busy(self, model_id: str, record: dict[str, Any]) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        from filelock import FileLock, Timeout

        stem = self.directory / "admin" / hashlib.sha1(model_id.encode()).hexdigest()[:16]
        lock = FileLock(f"{stem}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_json(Path(f"{stem}.json")) or {"action": "an admin action", "model": model_id,
                                                          "since": None, "pid": None}
            raise Busy(holder) from None
        try:
            _write_atomically(Path(f"{stem}.json"), record)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{stem}.json")
            lock.release()

    def write(self, state: dict[str, Any]) -> dict[str, Any]:
        """Record ``state`` as the next generation (call inside :meth:`locked`); returns it."""
        state = {**deepcopy(state), "generation": self.read()["generation"] + 1}
        if self.path is None:
            self._memory = deepcopy(state)
        else:
            _write_atomically(self.path, state)
        return state

    def changed(self) -> bool:
        """True when the file differs from the last time this was asked (a cheap stat)."""
        if self.path is None:
            return False
        try:
            stat = os.stat(self.path)
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    def acknowledge(self, record: dict[str, Any]) -> None:
        """Tell the other workers what this process now serves (``workers/<pid>.json``)."""
        if self.directory is not None:
            _write_atomically(self.directory / "workers" / f"{os.getpid()}.json", record)

    def forget_worker(self, pid: int) -> None:
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "workers" / f"{pid}.json").unlink()

    def workers(self) -> list[dict[str, Any]]:
        """What each live worker process has applied, read from the acknowledgement files."""
        if self.directory is None:
            return []
        records = []
        for path in sorted((self.directory / "workers").glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError):
                record = json.loads(path.read_text(encoding="utf-8"))
                if _alive(int(record["pid"])):
                    records.append(record)
        return records


def _empty() -> dict[str, Any]:
    return {"generation": 0, "models": {}, "removed": []}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
