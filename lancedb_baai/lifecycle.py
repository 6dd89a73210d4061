"""Engine lifecycle for servers: preload before fork, release, hot swap and rollback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from .models import hub as _hub
from .engines.cache import CACHE, EngineKey
from .functions.config import EngineConfig

logger = logging.getLogger(__name__)

EngineKind = Literal["embed", "rerank", "m3"]


def _config_class(kind: str) -> type[EngineConfig]:
    from .functions.embeddings import BAAIEmbeddings
    from .functions.reranker import BAAIRerankFunction

    classes: dict[str, type[EngineConfig]] = {"embed": BAAIEmbeddings, "rerank": BAAIRerankFunction}
    if kind == "m3":
        from .functions.m3 import BGEM3Embeddings

        classes["m3"] = BGEM3Embeddings
    if kind not in classes:
        raise ValueError(f"kind {kind!r} is not supported; use one of ['embed', 'rerank', 'm3']")
    return classes[kind]


def _config(name: str, kind: str, engine_options: dict[str, Any]) -> EngineConfig:
    return _config_class(kind)(name=name, **engine_options)


def preload(name: str, kind: EngineKind = "embed", **engine_options: Any) -> dict[str, Any]:
    """Load a model into this process's cache now, e.g. before a server forks its workers.

    ``engine_options`` are the engine fields of the functions (device, dtype, max_length,
    revision, trust_remote_code); function objects configured the same way then find the
    engine already loaded. Returns the engine's ``cache_info()`` record.
    """
    config = _config(name, kind, engine_options)
    key = config.engine_key()
    CACHE.get(key, config._load)
    return _record(key)


def release(name: str | None = None, kind: EngineKind | None = None) -> list[dict[str, Any]]:
    """Drop engines from the cache (all of them when ``name`` is None) and free their memory.

    Function objects stay valid: the next call loads the model again. Returns the
    ``cache_info()`` records of what was released.
    """
    model = None if name is None else _hub.model_id(name)

    kinds = None if kind is None else {kind, "m3"} if kind == "embed" else {kind}  # bge-m3 embeds too

    def match(key: EngineKey) -> bool:
        return (model is None or key.model == model) and (kinds is None or key.kind in kinds)

    return CACHE.release(match)


@contextmanager
def loaded(name: str, kind: EngineKind = "embed", **engine_options: Any) -> Iterator[dict[str, Any]]:
    """Preload on enter, release on exit: a model held for the duration of a block."""
    record = preload(name, kind, **engine_options)
    try:
        yield record
    finally:
        release(name, kind)


def swap(name: str, new_name: str, kind: EngineKind = "embed", allow_dims_change: bool = False,
         keep: int = 1, **engine_options: Any) -> dict[str, Any]:
    """Serve function objects configured with ``name`` from ``new_name`` from now on.

    The new model loads while the old one keeps serving; the switch is atomic, calls in
    flight finish on the old engine, and a failed load leaves the old engine serving. An
    embedding swap that changes the vector width is refused unless ``allow_dims_change``.
    ``keep`` old engines stay loaded for :func:`rollback` (1: the one before); older ones
    are released with the same memory return as :func:`release`.
    """
    old, new = _config(name, kind, engine_options), _config(new_name, kind, engine_options)

    def check(old_engine: Any, new_engine: Any) -> None:
        if kind == "rerank":
            return
        old_dims = old_engine.dims if old_engine is not None else old.ndims()
        if new_engine.dims != old_dims and not allow_dims_change:
            raise ValueError(
                f"swap refused: {new_name!r} makes {new_engine.dims}-d vectors but {name!r} made "
                f"{old_dims}-d ones (old width {old_dims}, new width {new_engine.dims}), and tables "
                "already store those. The old model keeps serving. Pass allow_dims_change=True if "
                "the tables will be re-embedded."
            )

    record = CACHE.swap(old.engine_key(), new.engine_key(), new._load, check, keep=keep)
    if kind != "rerank":
        logger.warning("%r now serves embeddings for %r: vectors already stored were made by the old model, so "
                       "searches and adds on their tables raise EmbeddingDriftError until rollback() or a re-embed.", new_name, name)
    return record


def rollback(name: str, kind: EngineKind = "embed", **engine_options: Any) -> dict[str, Any]:
    """Return ``name`` to the engine it was served by before the last :func:`swap`."""
    return CACHE.rollback(_config(name, kind, engine_options).engine_key())


def _record(key: EngineKey) -> dict[str, Any]:
    return next(r for r in CACHE.info() if (r["kind"], r["model"], r["device"], r["dtype"], r["backend"]) ==
                (key.kind, key.model, key.device, key.dtype, key.backend) and r["max_length"] == key.max_length)
