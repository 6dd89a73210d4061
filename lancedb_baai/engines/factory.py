"""The engine factory: from a cache key to a loaded engine, one loader per kind of model.

Loading is where a model's files meet this process, so it is also where the package
refuses what it should not run (remote code nobody allowed here) and turns a broken
model directory into an error that names the file and what to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import exports as _export, fidelity as _fidelity, fingerprint as _fingerprint, hub as _hub, trust as _trust
from ..runtimes.device import torch_dtype
from .torch_engines import BAAIEmbeddingEngine, BAAIRerankEngine, _TorchEngine, native_max_length
from .m3 import load_m3_engine

if TYPE_CHECKING:
    from .cache import EngineKey

logger = logging.getLogger(__name__)

Loader = Callable[["EngineKey", Path, bool], _TorchEngine]

def load_engine(key: EngineKey, trust_remote_code: bool = False, show_progress: bool = False,
                min_fidelity: float | None = None) -> Any:
    """Build the engine ``key`` names: resolve files, load weights, move to device and dtype.

    ONNX Runtime and OpenVINO keys open the model's export (made first if this machine has
    none) and pass the fidelity gate (``min_fidelity``, else the precision's default).
    One INFO log line per load; third-party progress bars only with ``show_progress``.
    """
    if key.backend != "torch":
        return load_exported(key, trust_remote_code, min_fidelity)
    return load_torch(key, trust_remote_code, show_progress)


def load_torch(key: EngineKey, trust_remote_code: bool = False, show_progress: bool = False) -> _TorchEngine:
    """The torch engine of ``key``."""
    if trust_remote_code and not _trust.remote_code_allowed(key.model):
        raise PermissionError(
            f"model {key.model!r} asks for trust_remote_code=True (its configuration, possibly "
            "a table's stored metadata, says so), which would run Python code from the model's "
            f"files. Allow it in this process with lancedb_baai.allow_remote_code({key.model!r}) "
            f"or {_trust.ALLOW_REMOTE_CODE_ENV}={key.model}, or drop trust_remote_code."
        )
    start = time.perf_counter()
    path = _hub.resolve(key.model, key.revision)
    _hub.check_files(path)
    with quiet_transformers(show_progress), _hub.explain_broken(path):
        engine = _LOADERS[key.kind](key, path, trust_remote_code)
    engine.model.to(device=key.device, dtype=torch_dtype(key.dtype)).eval()
    engine.weights = {"model": key.model, **_fingerprint.weights(path)}
    logger.info("loaded %s model %s on %s as %s in %.2fs", key.kind, key.model, key.device,
                key.dtype, time.perf_counter() - start)
    return engine


def load_exported(key: EngineKey, trust_remote_code: bool = False, min_fidelity: float | None = None) -> Any:
    """The ONNX Runtime / OpenVINO engine of ``key``: export once per machine, open torch-free, gate.

    torch is imported only when this machine has no export of the model yet, or no
    fidelity figures for it in this precision; both are then kept on disk for the next process.
    """
    start = time.perf_counter()
    engine = gated_engine(key, trust_remote_code)
    _fidelity.enforce(f"{key.model} on {key.backend} {key.dtype}", engine.fidelity, key.dtype, min_fidelity)
    logger.info("loaded %s model %s on %s %s in %.2fs (%s)", key.kind, key.model, key.backend, key.dtype,
                time.perf_counter() - start, _fidelity.describe(engine.fidelity))
    return engine


def recorded_fidelity(key: EngineKey) -> dict | None:
    """The figures this host recorded for ``key``'s export, read without opening it (None: not gated yet)."""
    path = _hub.resolve(key.model, key.revision)
    directory = _export.export_dir(key, {"model": key.model, **_fingerprint.weights(path)})
    if _export.manifest(directory) is None:
        return None
    return _fidelity.recorded(directory, key.dtype)


def gated_engine(key: EngineKey, trust_remote_code: bool = False) -> Any:
    """The exported engine of ``key`` with its fidelity figures, whatever they are (no verdict)."""
    from ..runtimes.exported import open_export

    if trust_remote_code:
        raise ValueError(f"backend={key.backend!r} cannot export a model that runs its own code "
                         "(trust_remote_code=True): use backend='torch' for it")
    path = _hub.resolve(key.model, key.revision)
    weights = {"model": key.model, **_fingerprint.weights(path)}
    reference = _Reference(key, trust_remote_code)
    directory = _export.ensure(key, weights, _hub.model_lock(key.model, key.revision), reference.engine)
    engine = open_export(key, directory, key.max_length)
    engine.weights = weights
    engine.fidelity = gate(key, engine, directory, reference)
    return engine


def gate(key: EngineKey, engine: Any, directory: Path, reference: _Reference) -> dict:
    """The fidelity figures of ``engine`` on this host: recorded ones, else measured now and recorded."""
    figures = _fidelity.recorded(directory, key.dtype)
    if figures is not None:
        return figures
    with _hub.model_lock(key.model, key.revision):
        figures = _fidelity.recorded(directory, key.dtype)
        if figures is None:
            figures = {**_fidelity.measure(key.kind, reference.engine(), engine),
                       "backend": key.backend, "precision": key.dtype, "reference": "torch float32 (cpu)"}
            _fidelity.record(directory, key.dtype, figures)
    return figures


class _Reference:
    """The float32 torch engine an export is traced from and measured against, loaded at most once."""

    def __init__(self, key: EngineKey, trust_remote_code: bool) -> None:
        self._key = replace(key, backend="torch", device="cpu", dtype="float32")
        self._trust = trust_remote_code
        self._engine: _TorchEngine | None = None

    def engine(self) -> _TorchEngine:
        if self._engine is None:
            self._engine = load_torch(self._key, self._trust)
        return self._engine


@contextmanager
def quiet_transformers(show_progress: bool = False) -> Iterator[None]:
    """No transformers progress bar or load report inside the block unless asked for."""
    from transformers.utils import logging as hf_logging

    bar_was_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if not show_progress:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _load_embedder(key: EngineKey, path: Path, trust_remote_code: bool) -> BAAIEmbeddingEngine:
    if _hub.architectures(path, "ForSequenceClassification"):
        raise _hub.WrongModelError(
            f"{str(path)!r} is a cross-encoder reranker, not an embedding model. Use it with "
            "'local-baai-rerank' / BAAIReranker, and give 'local-baai' a bge embedder."
        )
    if (path / "modules.json").is_file():
        return _load_st_embedder(key, path, trust_remote_code)
    return _load_plain_embedder(key, path, trust_remote_code)


def _load_st_embedder(key: EngineKey, path: Path, trust_remote_code: bool) -> BAAIEmbeddingEngine:
    """A sentence-transformers layout, its modules (pooling, dense, normalize) as written."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", trust_remote_code=trust_remote_code,
                                local_files_only=True)
    if key.max_length is not None:
        model.max_seq_length = key.max_length
    dims = _hub.embedding_dims(path)
    return BAAIEmbeddingEngine(key, model, model.tokenizer, model.max_seq_length, dims,
                               lambda batch: model(batch)["sentence_embedding"])


def _load_plain_embedder(key: EngineKey, path: Path, trust_remote_code: bool) -> BAAIEmbeddingEngine:
    """A plain transformers export: bge's CLS pooling on the last hidden state."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    max_length = key.max_length or native_max_length(model.config, tokenizer)
    return BAAIEmbeddingEngine(key, model, tokenizer, max_length, model.config.hidden_size,
                               lambda batch: model(**batch).last_hidden_state[:, 0])


def _load_reranker(key: EngineKey, path: Path, trust_remote_code: bool) -> BAAIRerankEngine:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _check_cross_encoder(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    max_length = key.max_length or min(512, native_max_length(model.config, tokenizer))
    return BAAIRerankEngine(key, model, tokenizer, max_length)


def _check_cross_encoder(path: Path) -> None:
    """Refuse an embedder or a multi-label classifier before loading it as a reranker."""
    config = _hub.read_json(path / "config.json")
    architectures = config.get("architectures") or []
    if not _hub.architectures(path, "ForSequenceClassification"):
        raise _hub.WrongModelError(
            f"{str(path)!r} is an embedding model ({', '.join(architectures) or 'no classifier head'}), "
            "not a cross-encoder reranker. Use it with 'local-baai' for embeddings, and give "
            "the reranker a bge-reranker model such as 'BAAI/bge-reranker-base'."
        )
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
    if labels != 1:
        raise _hub.WrongModelError(
            f"{str(path)!r} is a classifier with {labels} labels; a bge reranker has a single "
            "relevance logit (num_labels=1). Pass a bge-reranker model directory."
        )


_LOADERS: dict[str, Loader] = {"embed": _load_embedder, "rerank": _load_reranker, "m3": load_m3_engine}
