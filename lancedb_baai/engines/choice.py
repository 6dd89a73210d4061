"""Which runtime runs a model here (torch, ONNX Runtime or OpenVINO), in which precision, and why.

``backend="auto"`` takes, in a fixed order of speed measured on each machine class (see
the README's Performance section), the first runtime that is installed, runs the
precision natively on this CPU and passes the fidelity gate for the model. The order
depends only on the host's instruction sets and what OpenVINO reports it can run, and the
gate's verdict is recorded per host next to the export, so every process on a host makes
the same choice, idle or loaded: no choice ever comes from a timing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

from ..runtimes.device import cpu_bf16_report, native_bf16_flags, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
DTYPE_OF = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}
BACKEND_ENV = "LANCEDB_BAAI_BACKEND"
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
EXPORTED = ("onnx", "openvino")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; use one of {list(BACKENDS)}")
    return backend


def check_precision(precision: str | None) -> str | None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {list(PRECISIONS)} or None")
    return precision


def installed(backend: str) -> bool:
    """Whether the runtime of ``backend`` can be imported here (torch always counts as installed)."""
    return backend == "torch" or importlib.util.find_spec(RUNTIMES[backend]) is not None


def extra(backend: str) -> str:
    return f"pip install 'lancedb_baai[{backend}]'"


@functools.cache
def openvino_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (else its bf16 hint silently runs float32)."""
    if not native_bf16_flags() or not installed("openvino"):
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class Choice:
    """A resolved backend: what runs, where, in which dtype, and why (shown by cache_info and info)."""

    backend: str
    device: str
    dtype: str
    reason: str
    fidelity: dict[str, Any] | None = None


def choose(kind: str, model: str, revision: str | None, backend: str, precision: str | None,
           dtype: str, device: str, trust_remote_code: bool = False,
           min_fidelity: float | None = None) -> Choice:
    """Resolve ``backend`` (and "auto" device, dtype and precision) for one configuration.

    Memoised per process; "auto" may export and gate the model the first time a host sees it.
    """
    return _choose(kind, model, revision, backend, precision, dtype, device, trust_remote_code, min_fidelity)


@functools.lru_cache(maxsize=256)
def _choose(kind: str, model: str, revision: str | None, backend: str, precision: str | None,
            dtype: str, device: str, trust_remote_code: bool, min_fidelity: float | None) -> Choice:
    source = "asked for"
    if backend == "auto":
        configured = os.environ.get(BACKEND_ENV, "").strip()
        if configured and configured != "auto" and not (kind == "m3" and configured in EXPORTED):
            backend, source = check_backend(configured), f"{BACKEND_ENV}={configured}"
    if backend == "torch":
        resolved = resolve_device(device)
        wanted = _torch_dtype(precision, dtype, resolved)
        return Choice("torch", resolved, wanted, source if wanted == dtype else f"{source}: torch {wanted}")
    if backend in EXPORTED:
        _check_exportable(kind, backend, device)
        return Choice(backend, "cpu", _exported_dtype(backend, precision, dtype), source)
    return _auto(kind, model, revision, precision, dtype, device, trust_remote_code, min_fidelity)


def _torch_dtype(precision: str | None, dtype: str, device: str) -> str:
    if precision == "int8":
        raise ValueError("precision='int8' runs on ONNX Runtime or OpenVINO, not torch: pass "
                         "backend='openvino' (or 'onnx', or 'auto')")
    wanted = DTYPE_OF[precision] if precision else dtype
    _agree(precision, dtype)
    return resolve_dtype(wanted, device)


def _agree(precision: str | None, dtype: str) -> None:
    if precision and dtype != "auto" and DTYPE_OF[precision] != dtype:
        raise ValueError(f"precision={precision!r} and dtype={dtype!r} disagree: pass one of them")


def _check_exportable(kind: str, backend: str, device: str) -> None:
    if device not in ("auto", "cpu"):
        raise ValueError(f"backend={backend!r} runs on the CPU; device={device!r} needs backend='torch' "
                         "(or 'auto', which takes torch on a GPU)")
    if kind == "m3":
        raise ValueError(f"backend={backend!r} runs bge-m3's dense vectors only ('local-baai' with "
                         f"backend={backend!r}); its sparse and ColBERT outputs need backend='torch'")
    if not installed(backend):
        raise ModuleNotFoundError(f"backend={backend!r} needs {RUNTIMES[backend]}, which is not installed "
                                  f"here: {extra(backend)}")


def _exported_dtype(backend: str, precision: str | None, dtype: str) -> str:
    """The dtype an export runs in: the one asked for, else bf16 where it is native here, else float32."""
    if dtype == "float16":
        raise ValueError(f"backend={backend!r} has no float16 on the CPU: use precision 'fp32', 'bf16' or 'int8'")
    _agree(precision, dtype)
    wanted = DTYPE_OF[precision] if precision else (dtype if dtype != "auto" else None)
    if wanted is None:
        return "bfloat16" if backend == "openvino" and openvino_bf16() else "float32"
    if wanted == "bfloat16" and not (backend == "openvino" and openvino_bf16()):
        raise ValueError(
            f"precision 'bf16' on {backend!r} needs a CPU with native bf16 (avx512_bf16 or amx_bf16) and "
            f"OpenVINO{'' if backend == 'openvino' else ' (ONNX Runtime has no bf16 CPU kernels)'}; this host "
            "would run it as float32. Use precision 'fp32' (exact) or 'int8'.")
    return wanted


def candidates(kind: str, device: str, precision: str | None, dtype: str,
               trust_remote_code: bool = False) -> list[tuple[str, str | None]]:
    """(backend, dtype) pairs "auto" tries on this host, fastest first (measured per machine class).

    ``("torch", None)`` is torch in its own "auto" dtype, the last resort, always there.
    """
    if device != "cpu" or kind == "m3" or trust_remote_code:
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


def _auto(kind: str, model: str, revision: str | None, precision: str | None, dtype: str, device: str,
          trust_remote_code: bool, min_fidelity: float | None) -> Choice:
    from ..models import fidelity as _fidelity
    from .cache import EngineKey
    from .factory import gated_engine, recorded_fidelity

    resolved = resolve_device(device)
    skipped: list[str] = []
    for backend, wanted in candidates(kind, resolved, precision, dtype, trust_remote_code):
        if backend == "torch":
            if wanted == "bfloat16" and not cpu_bf16_report().use_bf16:
                skipped.append(f"torch bfloat16: {cpu_bf16_report().reason()}")
                continue
            wanted = wanted or _torch_dtype(precision, dtype, resolved)
            why = "; ".join(skipped) or "the only backend for this model and device"
            return Choice("torch", resolved, wanted, f"auto: torch {wanted} ({why})")
        if not installed(backend):
            skipped.append(f"{backend} {wanted}: {RUNTIMES[backend]} is not installed ({extra(backend)})")
            continue
        key = EngineKey(kind, model, revision, "cpu", wanted, None, backend)
        figures = recorded_fidelity(key) or gated_engine(key, trust_remote_code).fidelity  # opened once per host
        if _fidelity.passes(figures, wanted, min_fidelity):
            before = f"; before it: {'; '.join(skipped)}" if skipped else ""
            return Choice(backend, "cpu", wanted, f"auto: {backend} {wanted}, the fastest installed CPU backend that "
                          f"passes the fidelity gate here ({_fidelity.describe(figures)}){before}", figures)
        skipped.append(f"{backend} {wanted}: fails the gate ({_fidelity.describe(figures)})")
    raise RuntimeError(f"no backend passes the fidelity gate for {model!r}: {'; '.join(skipped)}")
