"""Exporting a model to ONNX or OpenVINO once per machine, into a cache directory, never into the model's.

An export is a directory under :func:`cache_root`, named by the model's weights digest,
the engine kind, the backend, the graph precision and the exporter's version, holding the
graph, the tokenizer as ``tokenizer.json`` and ``manifest.json`` (written last, with the
size and digest of every file). It is built in a temporary directory beside its final
place and renamed into it, under the model's inter-process lock, so a process that dies
mid-export leaves no half-export behind, and a second process waits and then reads.
An export whose files do not match its manifest is treated as missing and built again.

Only the export needs torch: the graph computes what the torch engine's forward pass does
(the sentence-transformers modules as written, or CLS pooling; a reranker's logit), and
normalisation stays outside it so one export serves both settings.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import fingerprint as _fingerprint, fidelity as _fidelity

if TYPE_CHECKING:
    from ..engines.cache import EngineKey

logger = logging.getLogger(__name__)

FORMAT = 1
"""Bumped when what an export holds changes; part of every export's directory name."""
CACHE_ENV = "LANCEDB_BAAI_CACHE"
MANIFEST = "manifest.json"
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17


class BrokenExportError(RuntimeError):
    """An export that cannot be built from this model (the message says why and what to do)."""


def cache_root() -> Path:
    """Where exports live: ``$LANCEDB_BAAI_CACHE``, else ``$XDG_CACHE_HOME/lancedb_baai``, else ``~/.cache/lancedb_baai``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lancedb_baai"


def graph_precision(dtype: str) -> str:
    """The precision of the exported graph: int8 is its own graph; bf16 compiles the float32 one."""
    return "int8" if dtype == "int8" else "fp32"


def exporter_version(backend: str) -> str:
    """The versions that decide what the exporter writes (read without importing them)."""
    names = ("torch", "onnx", "onnxruntime") if backend == "onnx" else ("torch", "openvino", "nncf")
    return "-".join(f"{name}{_version(name)}" for name in names)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def export_dir(key: EngineKey, weights: dict[str, Any]) -> Path:
    """The directory the export of ``key``'s model (with these weights) lives in."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", key.model.strip("/"))[-60:]
    graph = graph_precision(key.dtype)
    name = f"{key.kind}-{key.backend}-{graph}-f{FORMAT}-{exporter_version(key.backend)}"
    return cache_root() / "exports" / f"{slug}-{weights['weights']}" / name


def manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, unaltered export in ``directory``, else None."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        return None
    for name, expected in files.items():
        file = directory / name
        if not file.is_file() or file.stat().st_size != expected.get("size"):
            return None
        if _fingerprint.file_digest(file, sampled=True) != expected.get("digest"):
            return None
    return data


def ensure(key: EngineKey, weights: dict[str, Any], lock: Any, torch_engine: Callable[[], Any]) -> Path:
    """The export for ``key``: the one on disk if it is whole, else built now (once across processes).

    ``torch_engine`` builds the float32 torch engine the graph is traced from; it is only
    called when an export has to be made. ``lock`` is the model's inter-process lock.
    """
    target = export_dir(key, weights)
    if manifest(target) is not None:
        return target
    with lock:
        if manifest(target) is not None:
            return target  # another process made it while this one waited
        if target.exists():
            logger.warning("export %s does not match its manifest (partial or altered): building it again", target)
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        try:
            _build(key, weights, torch_engine(), staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("exported %s model %s to %s (%s) in %.1fs", key.kind, key.model, key.backend,
                    graph_precision(key.dtype), time.perf_counter() - start)
    return target


def _build(key: EngineKey, weights: dict[str, Any], engine: Any, directory: Path) -> None:
    """Write the graph, the tokenizer and, last, the manifest of ``engine``'s model into ``directory``."""
    import torch

    tokenizer = _fast_tokenizer(engine)
    inputs = [name for name in INPUTS if name in engine.tokenizer("a", "b" if key.kind == "rerank" else None)]
    module = _forward(engine, inputs)
    example = _example(engine, inputs, key.kind)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on Python-side branches: the padded example covers them
        if key.backend == "onnx":
            _export_onnx(module, example, inputs, directory, key.dtype)
        else:
            _export_openvino(module, example, inputs, directory, key.dtype)
    tokenizer.save(str(directory / "tokenizer.json"))
    files = {f.name: {"size": f.stat().st_size, "digest": _fingerprint.file_digest(f, sampled=True)}
             for f in sorted(directory.iterdir()) if f.is_file()}
    data = {
        "format": FORMAT, "kind": key.kind, "backend": key.backend, "graph": graph_precision(key.dtype),
        "model": key.model, "weights": weights.get("weights"), "inputs": inputs,
        "dims": int(getattr(engine, "dims", 1)), "max_length": int(engine.max_length),
        "pad_id": int(engine.tokenizer.pad_token_id or 0), "exporter": exporter_version(key.backend),
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(data, indent=2), encoding="utf-8")


def _fast_tokenizer(engine: Any) -> Any:
    """A copy of the engine's fast (Rust) tokenizer with padding and truncation off (the runtime sets them)."""
    from tokenizers import Tokenizer

    backend = getattr(engine.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BrokenExportError(
            f"{engine.key.model!r} has only a slow (Python) tokenizer, which an export cannot carry. "
            "Save the model with a fast tokenizer (tokenizer.json), or use backend='torch'.")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _forward(engine: Any, inputs: list[str]) -> Any:
    """The torch engine's forward pass with positional tensor inputs, as exporters trace it."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.engine = engine
            self.model = engine.model  # registered, so the exporters see its parameters

        def forward(self, *tensors):
            batch = dict(zip(inputs, tensors))
            if engine.kind == "rerank":
                return self.model(**batch).logits.view(-1).float()
            return engine._pool(batch).float()

    return Forward().eval()


def _example(engine: Any, inputs: list[str], kind: str) -> tuple:
    """A padded batch of two different lengths to trace with (dynamic axes make any shape work)."""
    texts = ["a short text", "a somewhat longer text, with more tokens in it than the first one has"]
    pairs = (["a query", "another query"], texts) if kind == "rerank" else (texts,)
    encoded = engine.tokenizer(*pairs, padding=True, truncation=True, max_length=32, return_tensors="pt")
    return tuple(encoded[name] for name in inputs)


def _export_onnx(module: Any, example: tuple, inputs: list[str], directory: Path, dtype: str) -> None:
    import torch

    target = directory / "model.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["output"] = {0: "batch"}
    fp32 = directory / "fp32.onnx.tmp" if dtype == "int8" else target
    torch.onnx.export(module, example, str(fp32), input_names=inputs, output_names=["output"],
                      dynamic_axes=axes, opset_version=_OPSET, dynamo=False)
    if dtype == "int8":
        QUANTIZERS["onnx"](fp32, target, calibration_feeds(module.engine, inputs))
        fp32.unlink()


def _quantize_onnx(source: Path, target: Path, feeds: list[dict[str, Any]]) -> None:
    """Static int8 (QDQ, per channel) of the MatMuls, calibrated on the packaged calibration texts."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the quantizer leaves scratch files in the working directory
        try:
            quantize_static(str(source), str(target), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul"])
        finally:
            os.chdir(cwd)


def _export_openvino(module: Any, example: tuple, inputs: list[str], directory: Path, dtype: str) -> None:
    import openvino as ov

    model = ov.convert_model(module, example_input=example,
                             input=[(ov.PartialShape([-1, -1]), ov.Type.i64) for _ in inputs])
    for port, name in zip(model.inputs, inputs):  # the module's inputs are positional: name them
        port.get_tensor().set_names({name})
    if dtype == "int8":
        model = QUANTIZERS["openvino"](model, calibration_feeds(module.engine, inputs))
    ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=False)


def _quantize_openvino(model: Any, feeds: list[dict[str, Any]]) -> Any:
    """NNCF's static int8 for transformers (attention kept in float), on the packaged calibration texts."""
    import nncf

    return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds))


QUANTIZERS: dict[str, Callable[..., Any]] = {"onnx": _quantize_onnx, "openvino": _quantize_openvino}
"""How each backend makes its int8 graph (tests replace one to check that the gate refuses a bad one)."""

_CALIBRATION_BATCH = 8


def calibration_feeds(engine: Any, inputs: list[str]) -> list[dict[str, Any]]:
    """Padded int64 batches of the packaged calibration texts (pairs for a reranker), as graph inputs."""
    texts = _fidelity.calibration_texts()
    rerank = engine.kind == "rerank"
    pairs = ([t[:100] for t in texts[1:] + texts[:1]], texts) if rerank else (texts,)
    feeds = []
    for start in range(0, len(texts), _CALIBRATION_BATCH):
        chunk = [side[start: start + _CALIBRATION_BATCH] for side in pairs]
        encoded = engine.tokenizer(*chunk, padding=True, truncation="only_second" if rerank else True,
                                   max_length=engine.max_length,
                                   return_tensors="np")
        feeds.append({name: encoded[name].astype("int64") for name in inputs})
    return feeds
