"""The torch runtime: the model's own files, on the CPU or a GPU, in any dtype torch runs there.

The kind's torch module is built from the model's files; safetensors weights in the
model's own dtype stay views of the read-only map of those files (transformers does not
copy them), so every process on a host shares one copy. A cast dtype on the CPU (bf16,
fp16) would be a private copy per process: it is read instead from a cast copy written
once per machine into the export cache and mapped the same way. Outputs come back as
float32 numpy arrays, like every runtime's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..models import exports
from .base import Feeds, Graph, Request, Runtime, Session, register
from .device import cpu_bf16_report, torch_dtype
from .memory import WeightMemory, split_tensors

CAST_FILE = "weights.pt"
_SHARED_SLACK = 0.05
"""Up to this share of the weights may be private (small buffers) for an engine to count as sharing them."""


class TorchSession(Session):
    """A torch module on one device: numpy in, numpy out, under ``torch.inference_mode``."""

    def __init__(self, module: Any, device: str, inputs: tuple[str, ...]) -> None:
        self.module, self.device, self.inputs = module, device, inputs

    def _tensors(self) -> list[Any]:
        return [*self.module.parameters(), *self.module.buffers()]

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def weight_memory(self) -> WeightMemory:
        if self.device != "cpu":
            return WeightMemory(0, self.weight_bytes(), False, f"the weights live in {self.device} memory, "
                                                               "one copy per process")
        mapped, private, files = split_tensors(self._tensors())
        if private <= _SHARED_SLACK * max(1, mapped + private):
            names = ", ".join(sorted(files))
            return WeightMemory(mapped, private, True, f"views of the read-only map of {names}")
        return WeightMemory(mapped, private, False, "the weights were copied into this process (a checkpoint "
                                                    "that is not safetensors, or code that copies them)")

    def run(self, feeds: Feeds) -> tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(feeds[name]).to(self.device) for name in self.inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(output.float().cpu().numpy() for output in outputs)


class TorchRuntime(Runtime):
    """PyTorch, through transformers and sentence-transformers: every model, every device."""

    name = "torch"
    devices = ("cpu", "cuda", "mps")

    def shares_weights(self, device: str) -> bool:
        return device == "cpu"  # mapped files; GPU memory is per process

    def precisions(self) -> tuple[str, ...]:
        native = ("bfloat16",) if cpu_bf16_report().use_bf16 else ()
        return ("float32", *native, "float16")

    def open(self, request: Request, prepared: Path | None) -> tuple[Session, Graph]:
        import torch

        model = request.build()
        dtype = torch_dtype(request.dtype)
        if request.device == "cpu" and dtype != torch.float32:
            map_cast_copy(model.module, request)
        model.module.to(device=request.device, dtype=dtype).eval()
        return TorchSession(model.module, request.device, model.graph.inputs), model.graph


def cast_copy_dir(request: Request) -> Path:
    """Where this machine keeps ``request``'s model cast to its dtype (one copy, mapped by every process)."""
    name = f"{request.kind}-torch-{request.dtype}-f{exports.FORMAT}-{exports.versions('torch')}"
    return exports.export_dir(request.model, request.weights, name)


def map_cast_copy(module: Any, request: Request) -> None:
    """Point ``module``'s weights at the mapped cast copy of them, writing that copy first if this machine has none."""
    import torch

    def write(directory: Path) -> dict[str, Any]:
        torch.save(_cast_state(module, torch_dtype(request.dtype)), directory / CAST_FILE)
        return {"kind": request.kind, "backend": "torch", "graph": request.dtype, "model": request.model,
                "weights": request.weights}

    target = exports.ensure(cast_copy_dir(request), request.lock, write,
                            lambda: request.announce(f"torch {request.dtype} (a cast copy of the weights)"),
                            f"{request.kind} model {request.model} to torch {request.dtype}")
    state = torch.load(target / CAST_FILE, mmap=True, weights_only=True, map_location="cpu")
    module.load_state_dict(state, strict=True, assign=True)


def _cast_state(module: Any, dtype: Any) -> dict[str, Any]:
    """The module's state with floating tensors cast to ``dtype``; tensors shared in it stay shared."""
    cast: dict[int, Any] = {}
    state = {}
    for name, tensor in module.state_dict().items():
        pointer = tensor.data_ptr()
        if pointer not in cast:
            cast[pointer] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        state[name] = cast[pointer]
    return state


TORCH = register(TorchRuntime())
