"""Which device and dtype "auto" means on this host, and why."""

from __future__ import annotations

import functools
import time
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
    """Turn "auto" into cuda, then mps, then cpu, whichever this host has."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """Turn "auto" into the fastest dtype that keeps bge's ranking on ``device``."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "float16"
    if device == "cpu" and cpu_bf16_report().use_bf16:
        return "bfloat16"
    return "float32"


def dtype_decision(dtype: str, device: str) -> tuple[str, str]:
    """The dtype ``dtype`` resolves to on ``device``, and why (for cache_info and table metadata)."""
    resolved = resolve_dtype(dtype, device)
    if dtype != "auto":
        return resolved, "asked for"
    if device.startswith("cuda"):
        return resolved, "auto on CUDA: float16"
    if device == "cpu":
        return resolved, f"auto on CPU: {cpu_bf16_report().reason()}"
    return resolved, f"auto on {device}: float32"


@dataclass(frozen=True)
class Bf16Report:
    """What the CPU offers for bfloat16 and whether "auto" takes it."""

    native: bool
    flags: tuple[str, ...]
    speedup: float | None

    @property
    def use_bf16(self) -> bool:
        return self.native and self.speedup is not None and self.speedup > 1.15

    def reason(self) -> str:
        if not self.native:
            return "no native bf16 instructions (avx512_bf16/amx_bf16) found: float32"
        verdict = "bfloat16" if self.use_bf16 else "float32"
        return f"native bf16 ({', '.join(self.flags)}), bf16 matmul {self.speedup:.2f}x fp32: {verdict}"


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


@functools.cache
def cpu_bf16_report() -> Bf16Report:
    """Detect native bf16 and check once that a bf16 matmul really beats fp32 here."""
    flags = tuple(f for f in _BF16_FLAGS if f in _cpu_flags())
    if not flags:
        return Bf16Report(False, (), None)
    fp32 = _matmul_seconds("float32")
    bf16 = _matmul_seconds("bfloat16")
    return Bf16Report(True, flags, fp32 / bf16 if bf16 > 0 else None)


def _matmul_seconds(dtype: str, size: int = 384, repeats: int = 6) -> float:
    """Best-of time of an encoder-sized matmul (tokens x hidden x 4*hidden) in ``dtype``."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, 4 * size, dtype=getattr(torch, dtype))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def torch_dtype(name: str):
    """The torch dtype object for a resolved dtype name."""
    import torch

    return getattr(torch, name)
