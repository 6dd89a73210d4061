"""The registry of kinds: embed, rerank and bge-m3, each one object that knows its parts.

A kind names the engine that serves it, the torch module its model's files become (what
torch runs and what an export traces), how the fidelity gate measures it, whether it can
run on an export, whether it makes vectors, and the function configuration class that
LanceDB and the server create for it. Everything that depends on the kind asks this
registry; nothing compares a kind's name.

The configuration classes live above the engines, so they register themselves here with
:func:`function_of`, as LanceDB's own functions register with ``@register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..models import fidelity
from ..runtimes import torch_modules
from ..runtimes.base import TorchModel
from .base import Engine
from .embed import EmbeddingEngine
from .m3 import BGEM3Engine
from .rerank import RerankEngine

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """One kind of model: what serves it and how it is built, measured and served."""

    name: str
    engine: type[Engine]
    build: Callable[[Path, bool], TorchModel]
    """The kind's torch module from a model directory (``trust_remote_code`` second)."""
    measure: Callable[[Any, Any], dict[str, Any]]
    """The fidelity gate's figures of a candidate engine against the float32 torch reference."""
    makes_vectors: bool = True
    exportable: bool = True
    """Whether ONNX Runtime / OpenVINO can run it (bge-m3's three outputs stay on torch)."""
    serves_as: str = ""
    """The kind a served model id of this kind counts as (bge-m3 serves embeddings); default: itself."""

    @property
    def group(self) -> str:
        return self.serves_as or self.name

    def function(self) -> type:
        """The function configuration class of this kind (registered with :func:`function_of`)."""
        try:
            return _FUNCTIONS[self.name]
        except KeyError:
            raise LookupError(f"no function class is registered for kind {self.name!r}: import lancedb_baai") from None


EMBED = Kind("embed", EmbeddingEngine, torch_modules.embedder, fidelity.measure_vectors)
RERANK = Kind("rerank", RerankEngine, torch_modules.reranker, fidelity.measure_scores, makes_vectors=False)
M3 = Kind("m3", BGEM3Engine, torch_modules.m3, fidelity.measure_vectors, exportable=False, serves_as="embed")

_KINDS: dict[str, Kind] = {kind.name: kind for kind in (EMBED, RERANK, M3)}
_FUNCTIONS: dict[str, type] = {}


def get(name: str) -> Kind:
    """The kind called ``name``; an error listing the kinds otherwise."""
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"kind {name!r} is not supported; use one of {names()}")
    return kind


def names() -> list[str]:
    return list(_KINDS)


def function_of(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: the decorated configuration class is the function of kind ``name``."""
    get(name)

    def register(cls: type[T]) -> type[T]:
        _FUNCTIONS[name] = cls
        return cls

    return register
