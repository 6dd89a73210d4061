"""Which device and dtype "auto" means on this host, and why."""

from __future__ import annotations

import functools
import glob
import os
import sys
from dataclasses import dataclass
from typing import Literal

Device = str  # "auto", "cpu", "cuda", "cuda:N" or "mps"
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_device(device: str) -> str:
    """Reject a device name that no torch backend understands, naming the accepted ones."""
    if device in ("auto", "cpu", "cuda", "mps"):
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ValueError(f"device {device!r} is not supported; use one of {list(DEVICES)}")


def check_dtype(dtype: str) -> str:
    """Reject a dtype name outside the supported set, naming the accepted ones."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {list(DTYPES)}")
    return dtype


def resolve_device(device: str) -> str:
    """Turn "auto" into cuda, then mps, then cpu, whichever this host has.

    A Linux host with no GPU device nodes is answered without importing torch, so a
    process serving an ONNX Runtime or OpenVINO export never loads it.
    """
    if device != "auto":
        return device
    if "torch" not in sys.modules and not _gpu_nodes():
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _gpu_nodes() -> bool:
    """Whether a CUDA or ROCm device could be present (anything but Linux counts as maybe)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


DTYPE_ENV = "LANCEDB_BAAI_DTYPE"
THREADS_ENV = "LANCEDB_BAAI_THREADS"
"""Threads per inference of an ONNX Runtime / OpenVINO engine (default: the CPUs this process may use)."""


def auto_dtype(device: str) -> tuple[str, str]:
    """The dtype "auto" means on ``device`` (a resolved device name), and why.

    The answer depends only on the host (CPU flags, the torch build) and on
    ``LANCEDB_BAAI_DTYPE``, never on a timing, so every process on one host agrees,
    idle or loaded: vectors stored by one process and queries embedded by another
    come from the same precision.
    """
    override = os.environ.get(DTYPE_ENV, "").strip()
    if override and override != "auto":
        if override not in DTYPES:
            raise ValueError(f"{DTYPE_ENV}={override!r} is not supported; use one of {list(DTYPES)}")
        return override, f"{DTYPE_ENV}={override} overrides \"auto\""
    if device.startswith("cuda"):
        return "float16", "float16 on CUDA"
    if device == "cpu":
        report = cpu_bf16_report()
        return ("bfloat16" if report.use_bf16 else "float32"), report.reason()
    return "float32", f"float32 on {device}"


def resolve_dtype(dtype: str, device: str) -> str:
    """Turn "auto" into the dtype :func:`auto_dtype` picks for ``device``; others pass through."""
    return auto_dtype(device)[0] if dtype == "auto" else dtype


def dtype_decision(dtype: str, device: str) -> tuple[str, str]:
    """The dtype a configured ``dtype`` resolves to on ``device``, and why (for table metadata)."""
    return auto_dtype(device) if dtype == "auto" else (dtype, "asked for")


def dtype_reason(dtype: str, device: str) -> str:
    """Why an engine keyed by a resolved ``dtype`` on ``device`` runs in it (for cache_info)."""
    auto, why = auto_dtype(device)
    return why if dtype == auto else f"asked for (\"auto\" would give {auto}: {why})"


@dataclass(frozen=True)
class Bf16Report:
    """What the CPU offers for bfloat16 and whether "auto" takes it.

    ``flags`` are the native bf16 instruction sets the kernel reports; ``backend`` is
    what torch's oneDNN backend says it can run in bf16 on them (None when no flag was
    found, so torch is not imported just to say float32).
    """

    flags: tuple[str, ...]
    backend: bool | None

    @property
    def native(self) -> bool:
        return bool(self.flags)

    @property
    def use_bf16(self) -> bool:
        return self.native and bool(self.backend)

    def reason(self) -> str:
        if not self.native:
            return "no native bf16 instructions (avx512_bf16/amx_bf16) on this CPU: float32"
        found = ", ".join(self.flags)
        if not self.backend:
            return f"native bf16 ({found}) but this torch build's oneDNN cannot use it: float32"
        return f"native bf16 ({found}) and torch's oneDNN runs bf16 on it: bfloat16"


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_bf16() -> bool:
    """Whether torch's oneDNN (mkldnn) backend is built in and supports bf16 on this CPU."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


_ISA_PREFIXES = ("sse4", "avx", "amx", "fma", "f16c", "vnni")


def isa_tag() -> str:
    """A short name for this CPU's vector instruction sets: what a layout packed for its kernels depends on."""
    import hashlib

    flags = sorted(f for f in _cpu_flags() if f.startswith(_ISA_PREFIXES))
    return hashlib.sha256(" ".join(flags).encode()).hexdigest()[:8] if flags else "generic"


_ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
"""Values of ``$ONEDNN_MAX_CPU_ISA`` below oneDNN's bf16 kernels: torch and OpenVINO then run bf16 without them."""


def native_bf16_flags() -> tuple[str, ...]:
    """The native bf16 instruction sets this CPU reports and oneDNN may use (empty: none).

    ``ONEDNN_MAX_CPU_ISA`` capped below bf16 (e.g. ``AVX2``, to measure an AVX2-only class on
    an AVX-512 host) leaves oneDNN, torch's and OpenVINO's kernels, without them.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ISA_CAPS_WITHOUT_BF16:
        return ()
    return tuple(f for f in _BF16_FLAGS if f in _cpu_flags())


@functools.cache
def cpu_bf16_report() -> Bf16Report:
    """Native bf16 from the CPU flags, confirmed by torch's backend: no timing, one answer per host."""
    flags = native_bf16_flags()
    return Bf16Report(flags, _onednn_bf16() if flags else None)


def torch_dtype(name: str):
    """The torch dtype object for a resolved dtype name."""
    import torch

    return getattr(torch, name)
