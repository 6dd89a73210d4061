"""The per-process engine cache: one load per key, counted, thread-safe and fork-aware.

Function objects are configuration only; they find their engine here by key. A key is
(kind, model, revision, device, dtype, max_length, backend) and nothing else, so objects that
differ in normalize, instruction or batch size share one engine.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtimes.device import THREADS_ENV, dtype_reason
from .history import History

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """What makes two engines different. Anything else is a per-call option."""

    kind: str
    model: str
    revision: str | None
    device: str
    dtype: str
    max_length: int | None
    backend: str = "torch"


@dataclass(frozen=True)
class Loaded:
    """A loaded engine and what is known of it: what the cache stores, never changed after load."""

    engine: Any
    weights: dict[str, Any]
    """The fingerprint of the files it was loaded from (model id, weights digest, revision, pooling)."""
    fidelity: dict[str, Any] | None
    """The gate's figures against float32 torch (None on torch itself)."""
    reason: str
    """Why this backend and dtype run it (shown by ``cache_info()``)."""
    export: Path | None = None
    checked: set[str] = field(default_factory=set, compare=False)
    """Stored fingerprints already compared with this engine (the drift guard's memo)."""

    @property
    def key(self) -> EngineKey:
        return self.engine.key

    def describe(self) -> dict[str, Any]:
        """What ``cache_info()`` shows of it beyond the key: why it runs here, its fidelity, where its weights live."""
        session = self.engine.session
        return {"backend_reason": self.reason, "fidelity": self.fidelity, "weights_bytes": session.weight_bytes(),
                "streams": session.streams(), **session.weight_memory().record()}


@dataclass
class _Slot:
    """One cache entry: the loaded engine that serves a key, and what it served before (for rollback)."""

    key: EngineKey
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: Loaded | None = None
    history: History | None = None
    calls: int = 0
    loads: int = 0
    kept: dict[str, Loaded | None] = field(default_factory=dict)
    """The engines the history may roll back to, by the model they serve."""


Loader = Callable[[EngineKey], Loaded]


class EngineCache:
    """Engines of this process, by key. Use the module-level :data:`CACHE`."""

    def __init__(self) -> None:
        self._slots: dict[EngineKey, _Slot] = {}
        self._lock = threading.Lock()
        self._total_loads = 0
        self._inherited: list[Any] = []

    def get(self, key: EngineKey, loader: Loader) -> Loaded:
        """The loaded engine for ``key``, loading it once; concurrent callers of a cold key wait for that load."""
        slot = self._slot(key)
        loaded = slot.loaded
        if loaded is None:
            with slot.lock:  # per key: loading one model never blocks another
                if slot.loaded is None:
                    slot.loaded = self._load(slot, key, loader)
                    slot.history = slot.history or History(key.model)
                loaded = slot.loaded
        slot.calls += 1
        return loaded

    def adopt(self, key: EngineKey, loaded: Loaded) -> None:
        """Serve ``key`` with an engine loaded elsewhere (choosing a backend measured it), counted as a load."""
        slot = self._slot(key)
        with slot.lock:
            if slot.loaded is None:
                slot.loaded = self._load(slot, key, lambda _: loaded)
                slot.history = slot.history or History(key.model)

    def peek(self, key: EngineKey) -> Loaded | None:
        """The loaded engine serving ``key`` if there is one, else None; never loads."""
        slot = self._slots.get(key)
        return None if slot is None else slot.loaded

    def swap(self, key: EngineKey, new_key: EngineKey, loader: Loader,
             check: Callable[[Any, Any], None] | None = None, keep: int = 1) -> dict[str, Any]:
        """Serve ``key`` from the model of ``new_key`` from now on, keeping ``keep`` old engines for rollback.

        The new engine is loaded before any lock callers wait on is taken; the switch is one
        assignment, so calls in flight finish on the engine they already hold. Engines older
        than the last ``keep`` are released, so a process that swaps daily does not grow.
        """
        if keep < 0:
            raise ValueError(f"keep={keep} must be 0 or more (old engines kept for rollback)")
        slot = self._slot(key)
        loaded = self._load(slot, new_key, loader)
        with slot.lock:
            old, history = slot.loaded, slot.history or History(key.model)
            if check is not None:
                check(old, loaded)
            slot.kept[history.served] = old
            slot.history = history.swapped(new_key.model, keep)
            slot.loaded = loaded
            dropped = [slot.kept.pop(name) for name in list(slot.kept) if name not in slot.history.previous]
        if dropped:
            dropped.clear()
            old = None
            free_memory()
        return self._record(slot)

    def rollback(self, key: EngineKey) -> dict[str, Any]:
        """Serve ``key`` from the engine it had before the last swap."""
        slot = self._slots.get(key)
        history = slot.history if slot is not None and slot.history is not None else History(key.model)
        back = history.rolled_back(f"{key.model!r} ({key.kind})")
        with slot.lock:  # an engine no longer kept (None) loads again on the next call
            slot.loaded, slot.history = slot.kept.pop(back.served, None), back
        return self._record(slot)

    def release(self, match: Callable[[EngineKey], bool]) -> list[dict[str, Any]]:
        """Drop matching engines and give their memory back to the system; return what was dropped."""
        with self._lock:
            dropped = [self._slots.pop(k) for k in list(self._slots) if match(k)]
        records = [self._record(slot) for slot in dropped]
        dropped.clear()
        free_memory()
        return records

    def info(self) -> list[dict[str, Any]]:
        """One record per cached engine, in load order."""
        with self._lock:
            slots = list(self._slots.values())
        return [self._record(slot) for slot in slots]

    def engines(self) -> list[tuple[EngineKey, Any]]:
        """The loaded engines and their keys, with those kept for rollback (what this process holds)."""
        with self._lock:
            slots = list(self._slots.values())
        held = [(slot.key, slot.loaded.engine) for slot in slots if slot.loaded is not None]
        return held + [(slot.key, old.engine) for slot in slots for old in slot.kept.values() if old is not None]

    def total_loads(self) -> int:
        """Model loads in this process since it started (or forked), released ones included."""
        return self._total_loads

    def _slot(self, key: EngineKey) -> _Slot:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(key)
            return slot

    def _load(self, slot: _Slot, key: EngineKey, loader: Loader) -> Loaded:
        loaded = loader(key)
        with self._lock:
            slot.loads += 1
            self._total_loads += 1
        return loaded

    def _record(self, slot: _Slot) -> dict[str, Any]:
        key, loaded = slot.key, slot.loaded
        described = loaded.describe() if isinstance(loaded, Loaded) else {}  # tests cache plain objects
        fidelity, backend_reason = described.get("fidelity"), described.get("backend_reason", "asked for")
        why = dtype_reason(key.dtype, key.device) if key.backend == "torch" else backend_reason
        return {
            "model": key.model, "served": slot.history.served if slot.history else key.model, "kind": key.kind,
            "backend": key.backend, "backend_reason": backend_reason, "fidelity": fidelity,
            "device": key.device, "dtype": key.dtype, "dtype_reason": why,
            "max_length": key.max_length, "streams": described.get("streams"),
            "revision": key.revision, "loads": slot.loads, "calls": slot.calls,
            "version": slot.history.version if slot.history else 0, "loaded": loaded is not None,
            "rollback_depth": len(slot.history.previous) if slot.history else 0,
            "pid": os.getpid(),
            **{k: v for k, v in described.items() if k.startswith(("weights_", "shared_weights"))},
        }

    def holds_engines(self) -> bool:
        """Whether any engine is loaded in this process (what a fork would hand its children)."""
        with self._lock:
            return any(slot.loaded is not None for slot in self._slots.values())

    def _after_fork_in_child(self) -> None:
        """Fresh locks and counters in a forked child; CUDA engines are never used there.

        CPU engines stay: the child reads the parent's weights through copy-on-write. A
        CUDA context does not survive fork, so those engines are parked (never touched)
        and the child loads its own on first use.
        """
        self._lock = threading.Lock()
        self._total_loads = 0
        _settle_threads_after_fork()
        for key in list(self._slots):
            slot = self._slots[key]
            if key.device.startswith("cuda"):
                self._inherited.append(self._slots.pop(key))
                continue
            slot.lock, slot.calls, slot.loads, slot.kept = threading.Lock(), 0, 0, {}
            slot.history = None if slot.history is None else History(slot.history.served, slot.history.version)
            if slot.loaded is not None:
                slot.loaded.engine.reset_after_fork()


def _settle_threads_after_fork() -> None:
    """Keep a forked child from hanging on thread pools it inherited half-initialised.

    The OpenMP pool torch used in the parent does not exist in the child, and a child
    that enters it waits forever. One intra-op thread per worker avoids the pool (and is
    the right size when a server forks one worker per core); ONNX Runtime and OpenVINO
    engines compile their graph again in the child, with one thread too. Tokenizer
    parallelism is likewise switched off in the child.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ[THREADS_ENV] = "1"  # ONNX Runtime / OpenVINO engines compile again with it
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def free_memory() -> None:
    """Collect garbage, empty the CUDA cache and ask the C allocator to return freed pages."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            logger.debug("malloc_trim is not available; freed memory stays with the process")


CACHE = EngineCache()
"""The engine cache of this process."""

_frozen_for_fork = False


def _freeze_before_fork() -> None:
    """A process that holds engines (preload before a fork) freezes the garbage collector for the fork.

    This is documented behaviour of the package, and it touches the collector only then.
    The children inherit the parent's objects in a permanent generation that their
    collections never walk, so a collection does not write to (and so copy) every page the
    model's Python objects live on; the weights stay shared copy-on-write, as the CPython
    docs advise for pre-fork servers. The parent unfreezes right after the fork. The cost: a
    reference cycle that was already garbage in the parent is never collected in a child.
    """
    global _frozen_for_fork
    _frozen_for_fork = CACHE.holds_engines()
    if _frozen_for_fork:
        gc.freeze()


def _unfreeze_after_fork() -> None:
    global _frozen_for_fork
    if _frozen_for_fork:
        gc.unfreeze()
        _frozen_for_fork = False


def _after_fork_in_child() -> None:
    global _frozen_for_fork
    _frozen_for_fork = False  # the child keeps its inherited objects frozen
    CACHE._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_freeze_before_fork, after_in_parent=_unfreeze_after_fork,
                        after_in_child=_after_fork_in_child)
