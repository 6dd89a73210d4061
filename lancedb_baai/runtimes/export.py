"""What the runtimes that run an export share: making the export once per machine and opening it.

The export is traced from the kind's float32 torch module (the same forward pass the
torch runtime runs), quantized to int8 when asked, and written with the model's fast
tokenizer and the graph's facts into the export cache. Opening it reads the graph and
the tokenizer and nothing else: no torch, no transformers.
"""

from __future__ import annotations

import json
import threading
import warnings
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..models import exports
from .base import Feeds, Graph, Request, Runtime, Session, TorchModel, default_threads
from .memory import WeightMemory, growth, mapped_in
from .torch_modules import quiet_transformers


class ExportRuntime(Runtime):
    """A runtime that runs an export of the model: it prepares the export, then opens it torch-free."""

    exporters: ClassVar[tuple[str, ...]] = ()
    """The packages whose versions decide what the export holds (part of its directory name)."""

    def export_dir(self, kind: str, model: str, weights: str | None, dtype: str) -> Path:
        """Where the export of ``model`` (these weights) for ``kind`` in ``dtype`` lives on this machine."""
        name = f"{kind}-{self.name}-{_precision(dtype)}-f{exports.FORMAT}-{exports.versions(*self.exporters)}"
        return exports.export_dir(model, weights, name)

    def prepare(self, request: Request) -> Path:
        precision = _precision(request.dtype)
        target = self.export_dir(request.kind, request.model, request.weights, request.dtype)
        what = f"{request.kind} model {request.model} to {self.name} ({precision})"
        return exports.ensure(target, request.lock, lambda staging: self._write(request, staging, precision),
                              lambda: request.announce(f"{self.name} {precision}"), what)

    def _write(self, request: Request, directory: Path, precision: str) -> dict[str, Any]:
        import torch

        model = request.build()
        feeds = request.calibration(model)
        example = tuple(torch.from_numpy(feeds[0][name][:2]) for name in model.graph.inputs)
        with torch.inference_mode(), warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")  # tracer notes on Python-side branches: the example covers them
            self.convert(model, example, directory, feeds if precision == "int8" else None)
        (directory / "tokenizer.json").write_text(model.graph.tokenizer, encoding="utf-8")
        return {"kind": request.kind, "backend": self.name, "graph": precision, "model": request.model,
                "weights": request.weights, "exporter": exports.versions(*self.exporters), **model.graph.facts()}

    @abstractmethod
    def convert(self, model: TorchModel, example: tuple, directory: Path, calibration: list[Feeds] | None) -> None:
        """Write the runtime's graph of ``model`` into ``directory`` (int8 when ``calibration`` is given)."""

    @abstractmethod
    def compile(self, directory: Path, dtype: str, threads: int) -> Any:
        """The export in ``directory`` compiled for this CPU: a callable from feeds to the outputs."""

    @abstractmethod
    def unshared(self, directory: Path, dtype: str) -> str | None:
        """None when processes running the export in ``directory`` share one copy of its weights, else why not."""

    def run_many(self, compiled: Any, batches: Iterable[Feeds]) -> Iterator[tuple[np.ndarray, ...]]:
        """The outputs of each batch in order (what :meth:`compile` returned runs them; one at a time here)."""
        return map(compiled, batches)

    def streams(self, compiled: Any) -> int | None:
        """The streams what :meth:`compile` returned runs on (None: this runtime has none)."""
        return None

    def open(self, request: Request, prepared: Path | None) -> tuple[Session, Graph]:
        if prepared is None:
            raise ValueError(f"backend {self.name!r} runs an export: prepare the model first")
        facts = json.loads((prepared / exports.MANIFEST).read_text(encoding="utf-8"))
        graph = Graph.from_facts(facts, (prepared / "tokenizer.json").read_text(encoding="utf-8"))
        return ExportSession(self, prepared, request.dtype), graph


def _precision(dtype: str) -> str:
    """The precision of the exported graph: int8 is its own graph; bf16 compiles the float32 one."""
    return "int8" if dtype == "int8" else "fp32"


class ExportSession(Session):
    """A compiled export; compiled at open, and again in a forked child on first use."""

    def __init__(self, runtime: ExportRuntime, directory: Path, dtype: str) -> None:
        self.runtime, self.directory, self.dtype = runtime, directory, dtype
        self._lock = threading.Lock()
        self._compiled: Any = None
        self._private = 0
        self._compiled_now()  # a broken export fails at load, not at the first call

    def _compiled_now(self) -> Any:
        compiled = self._compiled
        if compiled is None:
            with self._lock:
                if self._compiled is None:
                    self._compiled, self._private = growth(
                        lambda: self.runtime.compile(self.directory, self.dtype, default_threads()))
                compiled = self._compiled
        return compiled

    def run(self, feeds: Feeds) -> tuple[np.ndarray, ...]:
        return self._compiled_now()(feeds)

    def run_many(self, batches: Iterable[Feeds]) -> Iterator[tuple[np.ndarray, ...]]:
        return self.runtime.run_many(self._compiled_now(), batches)

    def streams(self) -> int | None:
        compiled = self._compiled  # a forked child compiles on first use, not to be described
        return None if compiled is None else self.runtime.streams(compiled)

    def weight_bytes(self) -> int:
        """The export's graph files (the weights are most of them)."""
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.suffix in (".onnx", ".bin"))

    def weight_memory(self) -> WeightMemory:
        """Export files mapped in this process, and the memory the runtime allocated when it compiled them."""
        why = self.runtime.unshared(self.directory, self.dtype)
        where = why or f"the runtime reads the weights mapped from {self.directory}"
        return WeightMemory(mapped_in([self.directory]), self._private, why is None, where)

    def after_fork(self) -> None:
        """The runtime's thread pool did not survive the fork: compile again in the child, on first use.

        ``$LANCEDB_BAAI_THREADS``, which a fork sets to 1 (the right size when a server forks
        one worker per core; a server sets its own count after the fork), sizes the new one.
        The inherited compiled model is kept alive for good: its runtime's worker threads
        stayed in the parent, and freeing it in the child waits for them forever.
        """
        self._lock = threading.Lock()
        if self._compiled is not None:
            _never_free(self._compiled)
        self._compiled = None


def _never_free(compiled: Any) -> None:
    """One extra reference the child never drops (its memory is the parent's, shared copy-on-write)."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(compiled))
