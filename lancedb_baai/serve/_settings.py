"""What a server runs: its models, limits and control settings, as plain configuration.

No FastAPI here: the CLI builds a :class:`ServeConfig`, the app factory reads it, and the
client side of the package never imports this module's heavier neighbours.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..functions.config import EngineOptions, PathStr

ADMIN_TOKEN_ENV = "LANCEDB_BAAI_ADMIN_TOKEN"
"""The environment variable the CLI reads the admin token from (never a command-line option)."""

API_KEYS_ENV = "LANCEDB_BAAI_API_KEYS"
"""Comma-separated API keys for the data routes, read by the CLI besides ``--api-key``."""

MIN_REMOTE_TOKEN_CHARS = 16
"""Shortest admin token accepted when the server listens beyond loopback."""

ServedKind = Literal["embed", "rerank"]
LogFormat = Literal["text", "json"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ModelOptions(EngineOptions):
    """One model the server serves, under the id clients send as ``model``: ``alias``, else ``name``.

    An alias lets clients that only know fixed model names (LanceDB's ``openai`` function
    knows OpenAI's) reach a bge model: ``alias="text-embedding-3-small"``.
    """

    kind: ServedKind
    alias: str | None = None

    @property
    def id(self) -> str:
        return self.alias or self.name

    @classmethod
    def parse(cls, kind: str, spec: str, **options: object) -> ModelOptions:
        """``NAME`` or ``ALIAS=NAME``, as the CLI's --embed/--rerank take them."""
        alias, sep, name = spec.partition("=")
        return cls(kind=kind, name=name if sep else alias, alias=alias if sep else None, **options)

    def engine_options(self) -> dict[str, object]:
        """The options that pick the engine, as the package's functions take them."""
        return {"revision": self.revision, "device": self.device, "dtype": self.dtype,
                "max_length": self.max_length, "batch_size": self.batch_size, "backend": self.backend,
                "precision": self.precision, "min_fidelity": self.min_fidelity}


class ServeConfig(BaseModel):
    """Everything :func:`lancedb_baai.serve.create_app` and :func:`lancedb_baai.serve.run` need.

    Parameters
    ----------
    models : list of ModelOptions
        What to serve; at least one. Several embedders and rerankers may be served at once.
    state_dir : str or None
        Where swaps and rollbacks are recorded (``state.json``). A restart with the same
        directory serves the last good models; several workers share it to hear about swaps.
    admin_token : str or None
        Enables ``/admin/*``; requests must send ``Authorization: Bearer <token>``.
    micro_batching : bool
        Merge concurrent requests for one model into shared engine calls; False runs one
        request per engine call (still queued, one at a time per model).
    batch_wait_ms : float
        How long the batcher waits for more requests to share an engine call.
    max_queue : int
        Requests waiting per model; beyond it the server answers 503 with Retry-After.
    max_texts : int, max_chars : int
        Limits per request (413 naming the limit).
    api_keys : list of str
        Keys the data routes accept as ``Authorization: Bearer <key>``; none: the data routes
        are open, which a server listening beyond loopback refuses unless ``allow_no_api_key``.
    memory_budget : int or None
        Bytes of model weights this process may hold; a load, swap or rollback that would go
        beyond it is refused (409). Given as a number or a size such as ``"6GiB"``.
    log_format : {"text", "json"}
        The server's log lines, access log included: ``key=value`` text or one JSON object per line.
    tables : list of str
        LanceDB tables as ``URI:NAME``; a swap or rollback of an embedder answers with those
        whose vectors the old model made and the new one would not (``affected_tables``).
    """

    models: list[ModelOptions]
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=1)
    state_dir: PathStr | None = None
    admin_token: str | None = None
    micro_batching: bool = True
    batch_wait_ms: float = Field(default=2.0, ge=0)
    max_batch_tokens: int | None = Field(default=None, gt=0)
    max_queue: int = Field(default=256, gt=0)
    max_texts: int = Field(default=512, gt=0)
    max_chars: int = Field(default=100_000, gt=0)
    watch_interval_s: float = Field(default=0.2, gt=0)
    log_level: str = "info"
    log_format: LogFormat = "text"
    api_keys: list[str] = Field(default_factory=list)
    allow_no_api_key: bool = False
    memory_budget: int | None = Field(default=None, gt=0)
    tables: list[str] = Field(default_factory=list)
    load_defaults: dict[str, object] = Field(default_factory=dict)
    """Engine options (device, dtype, max_length, batch_size) of ``/admin/load`` when it sends none."""

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        from ._tables import parse

        for spec in value:
            parse(spec)
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        if any(not key.strip() for key in value):
            raise ValueError(f"an API key is empty; pass --api-key SECRET or set {API_KEYS_ENV}=key1,key2")
        return value

    @field_validator("admin_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"the admin token is empty; set {ADMIN_TOKEN_ENV} to a secret, or unset it "
                             "to keep the admin routes off")
        return value

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if not self.models:
            raise ValueError("nothing to serve: pass --embed NAME and/or --rerank NAME")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a model is listed twice: {ids}; serve each name once")
        if self.admin_token is not None and not is_loopback(self.host) \
                and len(self.admin_token) < MIN_REMOTE_TOKEN_CHARS:
            raise ValueError(
                f"admin routes on {self.host!r} (not loopback) need an admin token of at least "
                f"{MIN_REMOTE_TOKEN_CHARS} characters in {ADMIN_TOKEN_ENV}; put TLS in front of "
                "the server too")
        if not self.api_keys and not self.allow_no_api_key and not is_loopback(self.host):
            raise ValueError(
                f"the server would listen on {self.host!r} (not loopback) with its data routes open to "
                f"anyone: pass --api-key SECRET (or set {API_KEYS_ENV}), or --allow-no-api-key if a "
                "proxy in front of it checks the callers")
        return self

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None

    def threads_per_worker(self) -> int:
        """torch threads per worker: given, else the cores shared out so workers x threads <= cores."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers)


def parse_size(text: object) -> int:
    """Bytes from ``"6GiB"``, ``"500MB"``, ``"1.5 GiB"`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"memory budget {text!r} is not a size; write it as bytes or with a unit "
                         "such as 6GiB, 512MiB, 8GB")
    return int(float(match.group(1)) * _UNITS[unit])


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1 addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
