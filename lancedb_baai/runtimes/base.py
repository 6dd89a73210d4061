"""The interface every runtime implements, and the registry that names them.

A runtime runs a model's forward pass on padded int64 token arrays and returns float32
arrays: it never sees text. It says whether it can run on this host and in which
precisions, and how a model is prepared for it: an export made once per machine, or
nothing (torch runs the model's own files). Registering a :class:`Runtime` subclass
instance with :func:`register` makes its name a valid ``backend=`` everywhere: the
functions, the server, the CLI. The shape follows text-embeddings-inference's backends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .device import THREADS_ENV
from .memory import UNKNOWN, WeightMemory

Feeds = Mapping[str, np.ndarray]
"""Padded int64 arrays by input name (``input_ids``, ``attention_mask``, ``token_type_ids``)."""

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Graph:
    """What an engine needs to know of a prepared model: its inputs, outputs, tokenizer and sizes.

    The same record whatever the runtime: read from the model's files for torch, from an
    export's manifest for the others.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tokenizer: str
    """The fast tokenizer as JSON, with padding and truncation off (the engine sets them)."""
    max_length: int
    """The longest input the model was built for (a configuration may ask for less)."""
    dims: int
    pad_id: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Facts only one kind uses (bge-m3: its special token ids)."""

    def facts(self) -> dict[str, Any]:
        """Everything but the tokenizer, as JSON-ready values (an export's manifest keeps them)."""
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "max_length": self.max_length,
                "dims": self.dims, "pad_id": self.pad_id, "extra": dict(self.extra)}

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any], tokenizer: str) -> Graph:
        return cls(tuple(facts["inputs"]), tuple(facts["outputs"]), tokenizer, int(facts["max_length"]),
                   int(facts["dims"]), int(facts["pad_id"]), dict(facts.get("extra") or {}))


@dataclass(frozen=True)
class TorchModel:
    """A kind's forward pass as a torch module on the CPU in float32, and its :class:`Graph`.

    ``module(*tensors)`` takes the graph's inputs in order and returns a tuple of float32
    tensors, one per output. It is what the torch runtime runs and what exports trace.
    """

    module: Any
    graph: Graph


@dataclass(frozen=True)
class Request:
    """One model for one runtime: which files, which precision, and how to build its torch module.

    ``build`` loads the kind's float32 CPU :class:`TorchModel` from the model's files; it is
    called only when a runtime needs it (torch always; an export only when this machine
    has none yet) and the caller makes sure it loads at most once. ``calibration`` gives
    padded batches of calibration texts for int8 quantization.
    """

    kind: str
    model: str
    path: Path
    weights: str | None
    device: str
    dtype: str
    build: Callable[[], TorchModel]
    calibration: Callable[[TorchModel], list[Feeds]]
    lock: Any = field(default_factory=contextlib.nullcontext)
    """The model's inter-process lock: one process prepares, the others wait and read."""
    announce: Callable[[str], None] = lambda what: None
    """Called once, just before a one-time preparation (an export), with what is prepared."""


class Session(ABC):
    """A model opened on one runtime: padded int64 arrays in, float32 arrays out. Safe to call from threads."""

    @abstractmethod
    def run(self, feeds: Feeds) -> tuple[np.ndarray, ...]:
        """The graph's outputs for one padded batch, in the graph's output order."""

    def run_many(self, batches: Iterable[Feeds]) -> Iterator[tuple[np.ndarray, ...]]:
        """The outputs of each batch, in order; a runtime with several streams runs some at once."""
        return map(self.run, batches)

    def after_fork(self) -> None:
        """Make the session usable in a forked child (most runtimes need nothing)."""

    def weight_bytes(self) -> int:
        """Bytes of the weights this session runs on (0 when the runtime cannot tell)."""
        return 0

    def weight_memory(self) -> WeightMemory:
        """Where the weights live in this process: mapped from files (shared by the host) or private."""
        return UNKNOWN

    def streams(self) -> int | None:
        """OpenVINO's streams, the calls that run at once (None: a runtime without streams, or not compiled yet)."""
        return None


class Runtime(ABC):
    """A way to run a model: torch, ONNX Runtime, OpenVINO, or one registered by a user."""

    name: ClassVar[str]
    module: ClassVar[str | None] = None
    """The Python module the runtime needs (None: always there)."""
    extra: ClassVar[str | None] = None
    """The package extra that installs it."""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    """Device families it runs on ("cpu", "cuda", "mps")."""

    def missing(self) -> str | None:
        """None when the runtime can run here, else what is missing and how to install it."""
        if self.module is None or importlib.util.find_spec(self.module) is not None:
            return None
        install = f" (pip install 'lancedb_baai[{self.extra}]')" if self.extra else ""
        return f"{self.module} is not installed{install}"

    @abstractmethod
    def precisions(self) -> tuple[str, ...]:
        """The dtypes it runs natively on this host ("float32", "bfloat16", "float16", "int8")."""

    def shares_weights(self, device: str) -> bool:
        """Whether processes on one host running a model on ``device`` share one copy of its weights."""
        return False

    def export_dir(self, kind: str, model: str, weights: str | None, dtype: str) -> Path | None:
        """Where this machine keeps the runtime's export of ``model`` (these weights); None: it runs the files."""
        return None

    def prepare(self, request: Request) -> Path | None:
        """Make what the runtime runs from (an export, once per machine); None: the model's own files."""
        return None

    @abstractmethod
    def open(self, request: Request, prepared: Path | None) -> tuple[Session, Graph]:
        """Open the prepared model for ``request``'s device and dtype."""


_RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Make ``runtime`` available as ``backend=runtime.name`` in this process."""
    if not runtime.name or runtime.name == "auto":
        raise ValueError(f"a runtime needs a name other than {runtime.name!r}")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def get(name: str) -> Runtime:
    """The runtime registered as ``name``; an error listing the registered ones otherwise."""
    runtime = _RUNTIMES.get(name)
    if runtime is None:
        raise ValueError(f"backend {name!r} is not supported; use one of {names()}")
    return runtime


def names() -> list[str]:
    """Every accepted ``backend=`` value: "auto" and the registered runtimes."""
    return ["auto", *_RUNTIMES]


def pad(encodings: list[Any], inputs: tuple[str, ...], pad_id: int) -> dict[str, np.ndarray]:
    """Padded int64 arrays of tokenized texts (``tokenizers`` encodings), right-padded with ``pad_id``."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in inputs}


def default_threads() -> int:
    """Threads per inference: ``$LANCEDB_BAAI_THREADS``, else the CPUs this process may run on."""
    configured = os.environ.get(THREADS_ENV, "").strip()
    if configured:
        return max(1, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
