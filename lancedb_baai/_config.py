"""The configuration every registered function shares, and how it finds its engine."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from . import _hub
from ._cache import CACHE, EngineKey
from ._device import check_device, check_dtype, resolve_device, resolve_dtype


class EngineConfig(BaseModel):
    """Which model to run and where: the fields that pick an engine from the cache.

    Only strings, numbers and flags live here, so the object pickles, deep-copies and
    round-trips through LanceDB's table metadata unchanged; the model itself is looked up
    in the per-process engine cache on each call.
    """

    engine_kind: ClassVar[str] = "embed"

    name: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(default=32, gt=0)
    max_length: int | None = Field(default=None, gt=0)
    trust_remote_code: bool = False
    show_progress: bool | None = None

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("dtype")
    @classmethod
    def _valid_dtype(cls, value: str) -> str:
        return check_dtype(value)

    @field_validator("name", mode="before")
    @classmethod
    def _path_as_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name is empty; pass a hub id such as 'BAAI/bge-small-en-v1.5' or a model directory")
        return value

    def engine_key(self) -> EngineKey:
        """The cache key of this configuration's engine (resolves "auto" device and dtype)."""
        device = resolve_device(self.device)
        return EngineKey(self._engine_kind(), _hub.model_id(self.name), self.revision, device,
                         resolve_dtype(self.dtype, device), self.max_length)

    def _engine_kind(self) -> str:
        """The kind of engine that serves this configuration; a subclass may decide by the model."""
        return self.engine_kind

    def engine(self) -> Any:
        """This configuration's engine from the per-process cache, loaded on first use."""
        return CACHE.get(self.engine_key(), self._load)

    def _load(self, key: EngineKey) -> Any:
        from ._engine import load_engine

        return load_engine(key, self.trust_remote_code)
