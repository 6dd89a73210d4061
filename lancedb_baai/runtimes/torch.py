"""The torch runtime: the model's own files, on the CPU or a GPU, in any dtype torch runs there.

Nothing is prepared: the kind's torch module is built from the model's files and moved
to the device and dtype. Outputs come back as float32 numpy arrays, like every runtime's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Feeds, Graph, Request, Runtime, Session, register
from .device import cpu_bf16_report, torch_dtype


class TorchSession(Session):
    """A torch module on one device: numpy in, numpy out, under ``torch.inference_mode``."""

    def __init__(self, module: Any, device: str, inputs: tuple[str, ...]) -> None:
        self.module, self.device, self.inputs = module, device, inputs

    def weight_bytes(self) -> int:
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

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

    def precisions(self) -> tuple[str, ...]:
        native = ("bfloat16",) if cpu_bf16_report().use_bf16 else ()
        return ("float32", *native, "float16")

    def open(self, request: Request, prepared: Path | None) -> tuple[Session, Graph]:
        model = request.build()
        model.module.to(device=request.device, dtype=torch_dtype(request.dtype)).eval()
        return TorchSession(model.module, request.device, model.graph.inputs), model.graph


TORCH = register(TorchRuntime())
