"""Which runtime runs a model here, in which precision, and why.

``backend="auto"`` takes, in a fixed order of speed measured on each machine class (see
the docs' performance page), the first runtime that is installed, runs the precision
natively on this CPU and passes the fidelity gate for the model. The order depends only
on the host's instruction sets and what OpenVINO reports it can run, and the gate's
verdict is recorded per host next to the export, so every process on a host makes the
same choice, idle or loaded: no choice ever comes from a timing.

When the verdict is not recorded yet, choosing measures it: the model's float32 torch
module is built once, each candidate is exported and gated against it, and the engine
that passes is handed to the cache to serve (nothing loaded to choose is thrown away;
when no export passes, the reference itself serves on torch).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..models import fidelity, hub
from ..runtimes import base as runtimes
from ..runtimes.device import cpu_bf16_report, native_bf16_flags, resolve_device, resolve_dtype
from ..runtimes.openvino import native_bf16 as openvino_bf16
from . import kinds
from .cache import CACHE, EngineKey, Loaded
from .factory import Reference, open_engine, recorded_figures, reference_for

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
DTYPE_OF = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}
BACKEND_ENV = "LANCEDB_BAAI_BACKEND"
WORKERS_ENV = "LANCEDB_BAAI_WORKERS"


def check_backend(backend: str) -> str:
    if backend != "auto":
        runtimes.get(backend)
    return backend


def check_precision(precision: str | None) -> str | None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {list(PRECISIONS)} or None")
    return precision


@dataclass(frozen=True)
class Choice:
    """A resolved backend: what runs, where, in which dtype, and why (shown by cache_info and info)."""

    backend: str
    device: str
    dtype: str
    reason: str


@dataclass(frozen=True)
class Wanted:
    """What a configuration asks for: the inputs of a choice."""

    kind: str
    model: str
    revision: str | None
    backend: str
    precision: str | None
    dtype: str
    device: str
    max_length: int | None = None
    trust_remote_code: bool = False
    min_fidelity: float | None = None

    def key(self, backend: str, device: str, dtype: str) -> EngineKey:
        """The cache key of this configuration when ``backend`` runs it on ``device`` in ``dtype``."""
        return EngineKey(self.kind, self.model, self.revision, device, dtype, self.max_length, backend)


_chosen: dict[Wanted, Choice] = {}
_locks: dict[Wanted, threading.Lock] = {}
_guard = threading.Lock()


def choose(wanted: Wanted) -> Choice:
    """Resolve ``wanted`` (and "auto" device, dtype and precision); memoised per process.

    Concurrent first calls wait for one of them: "auto" may export and gate the model
    the first time a host sees it, and that happens once.
    """
    choice = _chosen.get(wanted)
    if choice is not None:
        return choice
    with _guard:
        lock = _locks.setdefault(wanted, threading.Lock())
    with lock:
        if wanted not in _chosen:
            _chosen[wanted] = _resolve(wanted, measure=True)
        return _chosen[wanted]


def peek(wanted: Wanted) -> Choice | None:
    """The choice for ``wanted`` if it can be made without loading anything (recorded verdicts), else None."""
    return _chosen.get(wanted) or _resolve(wanted, measure=False)


def forget() -> None:
    """Forget every choice of this process (the next call chooses again)."""
    _chosen.clear()


def _resolve(wanted: Wanted, measure: bool) -> Choice | None:
    """The choice for ``wanted``; None when it needs a gate verdict not recorded here and ``measure`` is off."""
    try:
        return _decide(wanted, measure)
    except _Undecided:
        return None


def _decide(wanted: Wanted, measure: bool) -> Choice:
    backend, source = wanted.backend, "asked for"
    if backend == "auto":
        configured = os.environ.get(BACKEND_ENV, "").strip()
        if configured and configured != "auto" and (kinds.get(wanted.kind).exportable or configured == "torch"):
            backend, source = check_backend(configured), f"{BACKEND_ENV}={configured}"
    if backend == "auto":
        return _auto(wanted, measure)
    runtime = runtimes.get(backend)
    device = _device_for(runtime, wanted)
    dtype = _dtype_for(runtime, wanted, device)
    if dtype == "bfloat16" and runtime.name != "torch" and not (wanted.precision or wanted.dtype != "auto"):
        return _precision_by_gate(wanted, backend, source, measure)
    reason = source if backend != "torch" or dtype == wanted.dtype else f"{source}: torch {dtype}"
    return Choice(backend, device, dtype, reason)





def _device_for(runtime: runtimes.Runtime, wanted: Wanted) -> str:
    device = resolve_device(wanted.device) if "cuda" in runtime.devices else wanted.device
    if device == "auto":
        device = runtime.devices[0]
    if device.split(":")[0] not in runtime.devices:
        where = "the CPU" if runtime.devices == ("cpu",) else " or ".join(runtime.devices)
        raise ValueError(f"backend={runtime.name!r} runs on {where}; device={device!r} "
                         "needs backend='torch' (or 'auto', which takes torch on a GPU)")
    if runtime.name != "torch" and not kinds.get(wanted.kind).exportable:
        raise ValueError(f"backend={runtime.name!r} runs bge-m3's dense vectors only ('local-baai' with "
                         f"backend={runtime.name!r}); its sparse and ColBERT outputs need backend='torch'")
    missing = runtime.missing()
    if missing is not None:
        raise ModuleNotFoundError(f"backend={runtime.name!r} cannot run here: {missing}")
    return device


def _dtype_for(runtime: runtimes.Runtime, wanted: Wanted, device: str) -> str:
    """The dtype asked for (precision or dtype, which must agree), else the runtime's own choice here."""
    if wanted.precision and wanted.dtype != "auto" and DTYPE_OF[wanted.precision] != wanted.dtype:
        raise ValueError(f"precision={wanted.precision!r} and dtype={wanted.dtype!r} disagree: pass one of them")
    asked = DTYPE_OF[wanted.precision] if wanted.precision else wanted.dtype
    if runtime.name == "torch":
        if asked == "int8":
            raise ValueError("precision='int8' runs on ONNX Runtime or OpenVINO, not torch: pass "
                             "backend='openvino' (or 'onnx', or 'auto')")
        return resolve_dtype(asked, device)
    precisions = runtime.precisions()
    if asked == "auto":
        return "bfloat16" if "bfloat16" in precisions else "float32"
    if asked not in precisions:
        raise ValueError(_unsupported(runtime.name, asked))
    return asked


def _unsupported(backend: str, dtype: str) -> str:
    if dtype == "float16":
        return f"backend={backend!r} has no float16 on the CPU: use precision 'fp32', 'bf16' or 'int8'"
    if dtype == "bfloat16":
        return (f"precision 'bf16' on {backend!r} needs a CPU with native bf16 (avx512_bf16 or amx_bf16) and "
                f"OpenVINO{'' if backend == 'openvino' else ' (ONNX Runtime has no bf16 CPU kernels)'}; this host "
                "would run it as float32. Use precision 'fp32' (exact) or 'int8'.")
    return f"backend={backend!r} cannot run {dtype} here; it runs {list(runtimes.get(backend).precisions())}"


def candidates(kind: str, device: str, precision: str | None, dtype: str,
               trust_remote_code: bool = False) -> list[tuple[str, str | None]]:
    """(backend, dtype) pairs "auto" tries on this host, fastest first (measured per machine class).

    ``("torch", None)`` is torch in its own "auto" dtype, the last resort, always there.
    """
    if device != "cpu" or not kinds.get(kind).exportable or trust_remote_code:
        return [("torch", None)]
    if precision == "int8":
        return [("openvino", "int8"), ("onnx", "int8")]
    wanted = DTYPE_OF[precision] if precision else (None if dtype == "auto" else dtype)
    order: list[tuple[str, str | None]] = []
    if wanted in (None, "bfloat16"):
        if openvino_bf16():
            order.append(("openvino", "bfloat16"))
        if native_bf16_flags():
            order.append(("torch", "bfloat16"))
    if wanted in (None, "float32"):
        order += [("openvino", "float32"), ("onnx", "float32")]
    return order + [("torch", None)]


class _Undecided(Exception):
    """The choice needs a gate verdict this host has not recorded, and measuring was not allowed."""


class _Candidates:
    """One resolution: candidates gated in turn, sharing one reference torch module; what was opened serves."""

    def __init__(self, wanted: Wanted, measure: bool) -> None:
        self.wanted, self.measure = wanted, measure
        self.device = resolve_device(wanted.device)
        self.skipped: list[str] = []
        self.reference: Reference | None = None
        self.opened: dict[EngineKey, Loaded] = {}
        self.figures: dict[str, Any] = {}
        self.refused: set[str] = set()
        """Precisions a runtime was gated in and fell short (the model is not faithful in them here)."""

    def key(self, backend: str, dtype: str) -> EngineKey:
        return self.wanted.key(backend, self.device if backend == "torch" else "cpu", dtype)

    def passes(self, backend: str, dtype: str) -> bool:
        """Whether ``backend`` in ``dtype`` is installed and passes the gate here (measured now if needed)."""
        missing = runtimes.get(backend).missing()
        if missing is not None:
            self.skipped.append(f"{backend} {dtype}: {missing}")
            return False
        key = self.key(backend, dtype)
        figures = recorded_figures(key, hub.resolve(key.model, key.revision))
        if figures is None:
            if not self.measure:
                raise _Undecided
            if self.reference is None:
                self.reference = reference_for(key, self.wanted.trust_remote_code)
            self.opened[key] = open_engine(key, self.reference, "chosen by the gate")
            figures = self.opened[key].fidelity
        self.figures = figures
        if not fidelity.passes(figures, dtype, self.wanted.min_fidelity):
            self.skipped.append(f"{backend} {dtype}: fails the gate ({fidelity.describe(figures)})")
            self.refused.add(dtype)
            return False
        return True

    def serve(self, backend: str, dtype: str, reason: str) -> Choice:
        """The choice of ``backend`` in ``dtype``; an engine opened to measure it is handed to the cache."""
        key = self.key(backend, dtype)
        loaded = self.opened.get(key)
        if loaded is None and self.reference is not None and backend == "torch" and key.device == "cpu" \
                and dtype == "float32":  # no export passed: the reference measured against serves
            loaded = Loaded(self.reference.engine(), self.reference.files, None, reason)
        if loaded is not None:
            CACHE.adopt(key, replace(loaded, reason=reason))
        return Choice(backend, key.device, dtype, reason)

    def why(self) -> str:
        return "; ".join(self.skipped)


def _precision_by_gate(wanted: Wanted, backend: str, source: str, measure: bool) -> Choice:
    """An exported backend asked for with no precision: bf16 where native and faithful here, else fp32."""
    tried = _Candidates(wanted, measure)
    if tried.passes(backend, "bfloat16"):
        return tried.serve(backend, "bfloat16", f"{source}: {backend} bfloat16, native here and faithful "
                                                f"({fidelity.describe(tried.figures)})")
    tried.passes(backend, "float32")  # measured with the same reference: the weights are read once
    return tried.serve(backend, "float32", f"{source}: {backend} float32 ({tried.why()})")


def one_of_several() -> str | None:
    """Why this process is one of several worker processes on its host, else None.

    ``$LANCEDB_BAAI_WORKERS`` says so (``lancedb-baai serve --workers N`` sets it; set it
    for workers started by hand); a process started by ``multiprocessing`` (a pool,
    ``ProcessPoolExecutor``) or a Ray actor is taken to be one of several.
    """
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"{WORKERS_ENV}={configured!r} must be the number of worker processes (1 or more)")
        return f"{WORKERS_ENV}={configured}" if int(configured) > 1 else None
    if multiprocessing.parent_process() is not None:
        return "a process started by multiprocessing"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        return "a Ray actor"
    return None


def _sharing_first(order: list[tuple[str, str | None]], device: str) -> list[tuple[str, str | None]]:
    """The candidates that share one copy of the weights between processes first, each group in speed order.

    torch bf16 is left out: "auto" takes it only after OpenVINO's bf16 export passed the gate
    (torch bf16 itself is not gated), and here it would come before that measurement.
    """
    order = [candidate for candidate in order if candidate != ("torch", "bfloat16")]
    return sorted(order, key=lambda candidate: not runtimes.get(candidate[0]).shares_weights(device))


def _auto(wanted: Wanted, measure: bool) -> Choice:
    tried = _Candidates(wanted, measure)
    order = candidates(wanted.kind, tried.device, wanted.precision, wanted.dtype, wanted.trust_remote_code)
    several = one_of_several()
    if several:
        order = _sharing_first(order, tried.device)
        tried.skipped.append(f"one of several worker processes ({several}): backends that share one copy of "
                             "the weights between processes first")
    for backend, dtype in order:
        if backend == "torch":
            if dtype in tried.refused:  # measured on another runtime: this precision is not faithful here
                tried.skipped.append(f"torch {dtype}: {dtype} fails the gate for this model here")
                continue
            if dtype == "bfloat16" and not cpu_bf16_report().use_bf16:  # asks torch's oneDNN: imports torch
                tried.skipped.append(f"torch bfloat16: {cpu_bf16_report().reason()}")
                continue
            dtype = dtype or _dtype_for(runtimes.get("torch"), wanted, tried.device)
            if dtype != "float32" and dtype in tried.refused:  # torch's own choice (bf16 here) was shown unfaithful
                tried.skipped.append(f"torch {dtype}: {dtype} fails the gate for this model here")
                dtype = "float32"
            why = tried.why() or "the only backend for this model and device"
            return tried.serve("torch", dtype, f"auto: torch {dtype} ({why})")
        if tried.passes(backend, dtype):
            before = f"; before it: {tried.why()}" if tried.skipped else ""
            return tried.serve(backend, dtype, f"auto: {backend} {dtype}, the fastest installed CPU backend that "
                               f"passes the fidelity gate here ({fidelity.describe(tried.figures)}){before}")
    raise RuntimeError(f"no backend passes the fidelity gate for {wanted.model!r}: {tried.why()}")
