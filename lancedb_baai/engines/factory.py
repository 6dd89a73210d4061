"""The engine factory: from a cache key to a complete, immutable record of a loaded engine.

Loading is where a model's files meet this process: the files are resolved and checked,
the runtime prepares the model (an export, once per machine) and opens it, the kind's
engine is built over it, and an exported engine passes the fidelity gate against float32
torch. The torch module an export is traced from is the one the gate measures against:
the weights are read once. Loading is also where the package refuses what it should not
run (remote code nobody allowed here) and turns a broken model directory into an error
that names the file and what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import fidelity, fingerprint, hub, trust
from ..runtimes import base as runtimes
from ..runtimes.torch_modules import quiet_transformers
from . import kinds, progress
from .base import Engine
from .cache import Loaded

if TYPE_CHECKING:
    from .cache import EngineKey

logger = logging.getLogger(__name__)


class Reference:
    """A model's float32 torch module on the CPU, built at most once: what exports trace and the gate measures."""

    def __init__(self, key: EngineKey, path: Path, trust_remote_code: bool, show_progress: bool = False) -> None:
        self.key = replace(key, backend="torch", device="cpu", dtype="float32")
        self.path, self._trust, self._show = path, trust_remote_code, show_progress
        self.files = files_of(self.key, path)
        """The fingerprint of the model's files (what every engine loaded from them records)."""
        self._model: runtimes.TorchModel | None = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def build(self) -> runtimes.TorchModel:
        with self._lock:
            if self._model is None:
                with quiet_transformers(self._show), hub.explain_broken(self.path):
                    self._model = kinds.get(self.key.kind).build(self.path, self._trust)
            return self._model

    def engine(self) -> Engine:
        """The float32 torch engine over the reference module (the same weights, not loaded again)."""
        if self._engine is None:
            session, graph = runtimes.get("torch").open(self.request(), None)
            self._engine = kinds.get(self.key.kind).engine(self.key, session, graph)
        return self._engine

    def request(self, key: EngineKey | None = None,
                announce: Callable[[str], None] = lambda what: None) -> runtimes.Request:
        """What a runtime needs to prepare and open the model of ``key`` (default: the reference itself)."""
        key = key or self.key
        kind = kinds.get(key.kind)
        return runtimes.Request(
            kind=key.kind, model=key.model, path=self.path, weights=self.files["weights"],
            device=key.device, dtype=key.dtype, build=self.build,
            calibration=lambda model: kind.engine.calibration_feeds(model.graph, fidelity.calibration_texts()),
            lock=hub.model_lock(key.model, key.revision), announce=announce)


def files_of(key: EngineKey, path: Path) -> dict[str, Any]:
    """The fingerprint of ``key``'s model files (memoised by the files' sizes and times)."""
    return {"model": key.model, **fingerprint.weights(path)}


def reference_for(key: EngineKey, trust_remote_code: bool = False, show_progress: bool = False) -> Reference:
    """A :class:`Reference` for ``key``'s model, its files resolved and checked (nothing loaded yet)."""
    check_trust(key, trust_remote_code)
    path = hub.resolve(key.model, key.revision)
    hub.check_files(path)
    return Reference(key, path, trust_remote_code, show_progress)


def load(key: EngineKey, trust_remote_code: bool = False, show_progress: bool = False,
         min_fidelity: float | None = None, reason: str = "asked for") -> Loaded:
    """Build the engine ``key`` names, with its record; an exported engine must pass the fidelity gate.

    The model's torch module is built once: an export is traced from it and measured against it.
    """
    start = time.perf_counter()
    reference = reference_for(key, trust_remote_code, show_progress)
    loaded = open_engine(key, reference, reason)
    if loaded.fidelity is not None:
        fidelity.enforce(f"{key.model} on {key.backend} {key.dtype}", loaded.fidelity, key.dtype, min_fidelity)
    where = f"{key.device} as {key.dtype}" if loaded.export is None else f"{key.backend} {key.dtype}"
    logger.info("loaded %s model %s on %s in %.2fs%s", key.kind, key.model, where, time.perf_counter() - start,
                f" ({fidelity.describe(loaded.fidelity)})" if loaded.fidelity else "")
    return loaded


def open_engine(key: EngineKey, reference: Reference, reason: str) -> Loaded:
    """The engine of ``key`` with its gate figures, whatever they are (the verdict is the caller's)."""
    runtime = runtimes.get(key.backend)
    with _Announcement(key, reference) as announcement:
        request = reference.request(key, announcement.start)
        prepared = runtime.prepare(request)
        session, graph = runtime.open(request, prepared)
        engine = kinds.get(key.kind).engine(key, session, graph)
        figures = None if prepared is None else gate(key, engine, prepared, reference)
    return Loaded(engine, reference.files, figures, reason, prepared)


def gate(key: EngineKey, engine: Engine, export: Path, reference: Reference) -> dict[str, Any]:
    """The fidelity figures of ``engine`` on this host: recorded ones, else measured now and recorded."""
    figures = fidelity.recorded(export, key.dtype)
    if figures is not None:
        return figures
    with hub.model_lock(key.model, key.revision):
        figures = fidelity.recorded(export, key.dtype)
        if figures is None:
            figures = {**kinds.get(key.kind).measure(reference.engine(), engine), "backend": key.backend,
                       "precision": key.dtype, "reference": "torch float32 (cpu)"}
            fidelity.record(export, key.dtype, figures)
    return figures


def recorded_figures(key: EngineKey, path: Path) -> dict[str, Any] | None:
    """The gate's figures this host recorded for ``key``'s export, read without opening it (None: none yet)."""
    export = runtimes.get(key.backend).export_dir(key.kind, key.model, files_of(key, path)["weights"], key.dtype)
    return None if export is None else fidelity.recorded(export, key.dtype)


def check_trust(key: EngineKey, trust_remote_code: bool) -> None:
    """Refuse remote code nobody allowed in this process, and remote code on an export."""
    if not trust_remote_code:
        return
    if key.backend != "torch":
        raise ValueError(f"backend={key.backend!r} cannot export a model that runs its own code "
                         "(trust_remote_code=True): use backend='torch' for it")
    if not trust.remote_code_allowed(key.model):
        raise PermissionError(
            f"model {key.model!r} asks for trust_remote_code=True (its configuration, possibly "
            "a table's stored metadata, says so), which would run Python code from the model's "
            f"files. Allow it in this process with lancedb_baai.allow_remote_code({key.model!r}) "
            f"or {trust.ALLOW_REMOTE_CODE_ENV}={key.model}, or drop trust_remote_code."
        )


class _Announcement:
    """One line on stderr when a model is prepared for a runtime on this machine for the first time.

    An export and its fidelity gate take seconds to minutes, once per machine and model;
    like a hub download, the user sees what happens instead of a silent first call.
    """

    def __init__(self, key: EngineKey, reference: Reference) -> None:
        self.key, self.reference = key, reference
        self.line: Any = None

    def start(self, what: str) -> None:
        if self.line is not None:
            return  # one line for all the preparations of one load
        size = fingerprint.weights_bytes(self.reference.path) / 2**20
        self.line = progress.Announcement(
            f"lancedb_baai: preparing {self.key.model} for {what} on this machine, once "
            f"({size:.1f} MiB of weights: export, then the fidelity gate; `lancedb-baai export` does it ahead of time)")

    def __enter__(self) -> _Announcement:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.line is not None:
            self.line.close()
