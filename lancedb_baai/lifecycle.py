"""Engine lifecycle for servers: preload before fork, release, hot swap and rollback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from .models import hub as _hub
from .engines import kinds
from .engines.cache import CACHE, EngineKey
from .functions.config import EngineConfig

logger = logging.getLogger(__name__)

EngineKind = Literal["embed", "rerank", "m3"]


def _config(name: str, kind: str, engine_options: dict[str, Any]) -> EngineConfig:
    return kinds.get(kind).function()(name=name, **engine_options)


def preload(name: str, kind: EngineKind = "embed", **engine_options: Any) -> dict[str, Any]:
    """Load a model into this process's cache now, e.g. before a server forks its workers.

    ``engine_options`` are the engine fields of the functions (device, dtype, max_length,
    revision, trust_remote_code); function objects configured the same way then find the
    engine already loaded. Returns the engine's ``cache_info()`` record.
    """
    config = _config(name, kind, engine_options)
    key = config.engine_key()
    CACHE.get(key, config.load_engine)
    return _record(key)


def release(name: str | None = None, kind: EngineKind | None = None) -> list[dict[str, Any]]:
    """Drop engines from the cache (all of them when ``name`` is None) and free their memory.

    Function objects stay valid: the next call loads the model again. Returns the
    ``cache_info()`` records of what was released.
    """
    model = None if name is None else _hub.model_id(name)

    served = None if kind is None else {kind} | {k for k in kinds.names() if kinds.get(k).serves_as == kind}

    def match(key: EngineKey) -> bool:
        return (model is None or key.model == model) and (served is None or key.kind in served)

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

    makes_vectors = kinds.get(kind).makes_vectors

    def check(old_loaded: Any, new_loaded: Any) -> None:
        if not makes_vectors:
            return
        old_dims = old_loaded.engine.dims if old_loaded is not None else old.ndims()
        new_dims = new_loaded.engine.dims
        if new_dims != old_dims and not allow_dims_change:
            raise ValueError(
                f"swap refused: {new_name!r} makes {new_dims}-d vectors but {name!r} made "
                f"{old_dims}-d ones (old width {old_dims}, new width {new_dims}), and tables "
                "already store those. The old model keeps serving. Pass allow_dims_change=True if "
                "the tables will be re-embedded."
            )

    record = CACHE.swap(old.engine_key(), new.engine_key(), new.load_engine, check, keep=keep)
    if makes_vectors:
        logger.warning("%r now serves embeddings for %r: vectors already stored were made by the old model, so "
                       "searches and adds on their tables raise EmbeddingDriftError until rollback() or a re-embed.", new_name, name)
    return record


def rollback(name: str, kind: EngineKind = "embed", **engine_options: Any) -> dict[str, Any]:
    """Return ``name`` to the engine it was served by before the last :func:`swap`."""
    return CACHE.rollback(_config(name, kind, engine_options).engine_key())


def _record(key: EngineKey) -> dict[str, Any]:
    return next(r for r in CACHE.info() if (r["kind"], r["model"], r["device"], r["dtype"], r["backend"]) ==
                (key.kind, key.model, key.device, key.dtype, key.backend) and r["max_length"] == key.max_length)
