"""The configuration every registered function shares, and how it finds its engine."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from ..engines import kinds
from ..engines.cache import CACHE, EngineKey
from ..engines.choice import Choice, Wanted, check_backend, check_precision, choose, peek
from ..engines.cache import Loaded
from ..engines.factory import load, recorded_figures
from ..models import fidelity as _fidelity, fingerprint as _fingerprint, hub as _hub
from ..runtimes import remote
from .drift import check
from ..runtimes.device import check_device, check_dtype, dtype_decision

logger = logging.getLogger(__name__)

METADATA_KEY = "lancedb_baai"
"""The key this package adds to a function's stored arguments: who wrote them, with what dtype."""

_LANCEDB_FIELDS = frozenset({"max_retries"})  # LanceDB's own, which these functions never use
SENSITIVE_FIELDS = ("api_key",)
"""Options LanceDB's ``create()`` takes only as ``$var:NAME``; never shown, never stored literally."""


def as_str(value: Any) -> Any:
    """A path-like value as the string pydantic fields hold; anything else as it is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathStr = Annotated[str, BeforeValidator(as_str)]
"""A string field that also takes a ``pathlib.Path`` (stored as its string)."""


class EngineOptions(BaseModel):
    """The options that choose an engine: which model, where, in which dtype, how long and how batched.

    Shared by the registered functions (:class:`EngineConfig`) and the server's model
    options, so both validate them the same way.
    """

    name: PathStr
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(default=32, gt=0)
    max_length: int | None = Field(default=None, gt=0)
    backend: str = "auto"
    precision: str | None = None
    min_fidelity: float | None = Field(default=None, ge=0, le=1)

    @field_validator("device", "dtype", "backend", "precision")
    @classmethod
    def _supported(cls, value: str, info: ValidationInfo) -> str:
        checks = {"device": check_device, "dtype": check_dtype, "backend": check_backend,
                  "precision": check_precision}
        return checks[info.field_name](value)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name is empty; pass a hub id such as 'BAAI/bge-small-en-v1.5' or a model directory")
        return value


class EngineConfig(EngineOptions):
    """Which model to run and where: the fields that pick an engine from the cache.

    Only strings, numbers and flags live here, so the object pickles, deep-copies and
    round-trips through LanceDB's table metadata unchanged; the model itself is looked up
    in the per-process engine cache on each call.
    """

    engine_kind: ClassVar[str] = "embed"

    trust_remote_code: bool = False
    show_progress: bool | None = None
    url: str | None = None
    """A ``lancedb-baai serve`` server to run the model on instead of this process (no torch here)."""
    api_key: str | None = None
    """The key that server wants (``--api-key``); give it to ``create()`` as ``"$var:NAME"``."""

    @staticmethod
    def sensitive_keys() -> list[str]:
        """Options LanceDB refuses as literal values in ``create()``: pass ``"$var:NAME"`` instead."""
        return list(SENSITIVE_FIELDS)

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        """Refuse an option this class does not have, listing the ones it has.

        Arguments rebuilt from a table's metadata carry :data:`METADATA_KEY`; an unknown
        option there was written by a newer version of the package, so it is ignored with a
        warning and the table still opens.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        written_by = data.pop(METADATA_KEY, None)
        unknown = sorted(set(data) - set(cls.model_fields))
        if not unknown:
            return data
        valid = sorted(set(cls.model_fields) - _LANCEDB_FIELDS)
        if written_by is None:
            raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {unknown} for "
                             f"{cls.__name__}; valid options are {valid}")
        version = written_by.get("version", "?") if isinstance(written_by, dict) else "?"
        logger.warning("ignoring option(s) %s stored by lancedb_baai %s: this version does not know "
                       "them (upgrade lancedb_baai to use them)", unknown, version)
        return {k: v for k, v in data.items() if k not in unknown}

    @model_validator(mode="after")
    def _key_needs_url(self) -> EngineConfig:
        if self.api_key is not None and self.url is None:
            raise ValueError("api_key is for a lancedb-baai server: pass url= that server's address too, "
                             "or drop api_key to run the model in this process")
        return self

    def engine_key(self) -> EngineKey:
        """The cache key of this configuration's engine (resolves "auto" backend, device and dtype)."""
        wanted = self.wanted()
        choice = choose(wanted)
        return wanted.key(choice.backend, choice.device, choice.dtype)

    def _key(self, choice: Choice) -> EngineKey:
        return self.wanted().key(choice.backend, choice.device, choice.dtype)

    def wanted(self) -> Wanted:
        """What this configuration asks of the backend choice."""
        return Wanted(self._engine_kind(), _hub.model_id(self.name), self.revision, self.backend, self.precision,
                      self.dtype, self.device, self.max_length, self.trust_remote_code, self.min_fidelity)

    def backend_choice(self) -> Choice:
        """Which backend, device and dtype run this configuration here, and why (memoised per process).

        "auto" may export and gate the model on its first use on a host (see :mod:`lancedb_baai.engines.choice`).
        """
        return choose(self.wanted())

    def _engine_kind(self) -> str:
        """The kind of engine that serves this configuration; a subclass may decide by the model."""
        return self.engine_kind

    def loaded(self) -> Loaded:
        """This configuration's engine and its record from the per-process cache, loaded on first use.

        An ONNX Runtime / OpenVINO engine loaded by a laxer configuration is refused here
        if its fidelity figures fall below this one's threshold.
        """
        loaded = CACHE.get(self.engine_key(), self.load_engine)
        if loaded.fidelity is not None:
            key = loaded.key
            _fidelity.enforce(f"{self.name} on {key.backend} {key.dtype}", loaded.fidelity, key.dtype,
                              self.min_fidelity)
        return loaded

    def engine(self) -> Any:
        """The engine that runs this configuration: a server's when ``url`` is set, else this process's."""
        if self.url:
            engine = remote.RemoteEmbedder if kinds.get(self.engine_kind).makes_vectors else remote.RemoteReranker
            return engine(self.url, self.name, self.api_key)
        return self.loaded().engine

    def fingerprint(self) -> dict[str, Any] | None:
        """What identifies the vectors this function makes; None for functions that make none."""
        return None

    def load_engine(self, key: EngineKey) -> Loaded:
        """Load the engine of ``key`` for this configuration (what the cache calls on a cold key)."""
        return load(key, self.trust_remote_code, show_progress=self.show_progress is True,
                    min_fidelity=self.min_fidelity, reason=self.backend_choice().reason)

    def __repr_args__(self):
        """The configuration without LanceDB's ``max_retries``, which these functions never use."""
        return [(name, "***" if name in SENSITIVE_FIELDS and value is not None else value)
                for name, value in super().__repr_args__() if name not in _LANCEDB_FIELDS]

    def safe_model_dump(self) -> dict[str, Any]:
        """The arguments stored in table metadata, plus who wrote them and the dtype the vectors get.

        The arguments are those given to ``create()`` (else the non-default fields), so a
        table rebuilt from them gets the same configuration. A key is stored only as the
        ``$var:NAME`` reference ``create()`` was given, never as its value.
        """
        original = getattr(self, "_original_args", None)
        if original is None:
            original = self.model_dump(exclude_defaults=True)
        args = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in original.items()
                if k != METADATA_KEY and not _secret_value(k, v)}
        return {**args, METADATA_KEY: self.provenance()}

    def public_dump(self) -> dict[str, Any]:
        """The non-default options with any key hidden: what a repr may show."""
        return {k: "***" if k in SENSITIVE_FIELDS else v for k, v in self.model_dump(exclude_defaults=True).items()}

    def provenance(self) -> dict[str, Any]:
        """Package version, and the backend, device and dtype this process embeds with (and why).

        Nothing is loaded: the backend is the one asked for, or the one "auto" chose from the
        verdicts recorded on this host (else ``"auto"``, chosen at first use), and the gate's
        figures are those recorded for it (see :meth:`EmbedderConfig.stored_provenance`).
        """
        from .._version import __version__

        if self.url:  # the server decides; this process has no torch to ask
            return {"version": __version__, "served_by": self.url}
        choice = peek(self.wanted())
        provenance: dict[str, Any] = {"version": __version__, "backend": self.backend, "device": None,
                                      "dtype": None, "dtype_reason": "chosen at the first embed"}
        if choice is not None:
            why = choice.reason
            if choice.backend == "torch":
                why = dtype_decision(self.dtype if self.precision is None else choice.dtype, choice.device)[1]
            provenance.update(backend=choice.backend, device=choice.device, dtype=choice.dtype, dtype_reason=why)
            figures = self._figures(self._key(choice))
            if figures is not None:
                provenance["fidelity"] = figures
        fingerprint = self.fingerprint()
        return provenance if fingerprint is None else {**provenance, "fingerprint": fingerprint}

    def _figures(self, key: EngineKey) -> dict[str, Any] | None:
        """The gate's figures for ``key``: the loaded engine's, else those recorded on this host (no load)."""
        loaded = CACHE.peek(key)
        if loaded is not None:
            return loaded.fidelity
        path = _hub.cached_dir(self.name, self.revision)
        return None if path is None else recorded_figures(key, path)


def _secret_value(name: str, value: Any) -> bool:
    """True for a sensitive option holding a key itself rather than a ``$var:`` reference to one."""
    return name in SENSITIVE_FIELDS and value is not None and not (isinstance(value, str) and value.startswith("$var:"))


class EmbedderConfig(EngineConfig):
    """An engine configuration that makes vectors: it fingerprints them and guards against drift.

    A function rebuilt from a table's metadata carries the fingerprint of the model that
    made the column; every engine it gets is compared with it once (see :mod:`.drift`).
    """

    on_drift: Literal["error", "warn"] = "error"
    """What a table's function does when the model serving it is not the one that made its vectors."""

    def semantics(self) -> dict[str, Any]:
        """What this function adds to the model: output, normalization, query instruction."""
        raise NotImplementedError

    def _dims_of(self, engine: Any) -> int:
        return int(engine.dims)

    def loaded(self) -> Loaded:
        """The loaded engine, checked once against the fingerprint stored with the table this function came from."""
        loaded = super().loaded()
        stored = self._stored()
        if stored is not None:
            check(self, loaded, stored)
        return loaded

    def _stored(self) -> dict[str, Any] | None:
        original = getattr(self, "_original_args", None) or {}
        stored = original.get(METADATA_KEY)
        return stored if isinstance(stored, dict) else None

    def stored_provenance(self) -> dict[str, Any] | None:
        """What the table this function was rebuilt from recorded under :data:`METADATA_KEY`, else None.

        A table created before its backend was measured on this host (a schema declared on
        a new machine) records the backend and, once the first rows are embedded, the gate's
        figures recorded for it here; they are filled in from this host's records.
        """
        stored = self._stored()
        if stored is None or stored.get("served_by") or stored.get("fidelity") is not None:
            return stored
        choice = peek(self.wanted())
        figures = None if choice is None else self._figures(self._key(choice))
        if figures is None:
            return stored
        now = {"backend": choice.backend, "dtype": choice.dtype}
        fingerprint = stored.get("fingerprint")
        if isinstance(fingerprint, dict) and fingerprint.get("dtype") is None:
            fingerprint = {**fingerprint, **now}
        return {**stored, **now, "device": choice.device, "fidelity": figures, "fingerprint": fingerprint}

    def fingerprint(self) -> dict[str, Any] | None:
        """The model and settings that make this function's vectors now (no weights are loaded).

        The engine's, if it is loaded (after a swap, the model that really serves); else
        read from the model's files.
        """
        if self.url:
            return None
        choice = peek(self.wanted())
        return self.fingerprint_of(None if choice is None else CACHE.peek(self._key(choice)), choice)

    def fingerprint_of(self, loaded: Loaded | None, choice: Choice | None = None) -> dict[str, Any]:
        """The fingerprint of this function's vectors when made by ``loaded`` (None: from the files)."""
        from .._version import __version__

        if loaded is not None:
            key = loaded.key
            weights, dims, dtype, backend = loaded.weights, self._dims_of(loaded.engine), key.dtype, key.backend
        else:
            dtype, backend = (None, self.backend) if choice is None else (choice.dtype, choice.backend)
            weights, dims = self._files_fingerprint(), self.ndims()
        return {**weights, **self.semantics(), "dims": dims, "dtype": dtype, "backend": backend,
                "version": __version__}

    def _files_fingerprint(self) -> dict[str, Any]:
        model = _hub.model_id(self.name)
        path = _hub.cached_dir(self.name, self.revision)
        if path is None:
            try:
                path = _hub.resolve(self.name, self.revision)
            except _hub.ModelNotAvailableError:
                logger.warning("%r is not available here, so the table records no weights fingerprint for it: "
                               "searches will not notice a later change of its weights", self.name)
                return {"model": model, "weights": None}
        return {"model": model, **_fingerprint.weights(path)}
