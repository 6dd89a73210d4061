"""ONNX Runtime on the CPU: an ONNX export of the model (fp32, or int8 from dynamic quantization)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..models import exports
from .base import Feeds, Request, TorchModel, register
from .device import isa_tag
from .export import ExportRuntime
from .int8 import kept_float

_OPSET = 17


class OnnxRuntime(ExportRuntime):
    """ONNX Runtime's CPU execution provider."""

    name = "onnx"
    module = "onnxruntime"
    extra = "onnx"
    exporters = ("torch", "onnx", "onnxruntime")

    def __init__(self) -> None:
        self.quantizer: Callable[[Path, Path, list[Feeds]], None] = quantize
        """How the int8 graph is made (a test swaps in a broken one to see the gate refuse it)."""

    def precisions(self) -> tuple[str, ...]:
        return ("float32", "int8")  # ONNX Runtime has no bf16 CPU kernels

    def convert(self, model: TorchModel, example: tuple, directory: Path, calibration: list[Feeds] | None) -> None:
        import torch

        target = directory / "model.onnx"
        inputs, outputs = list(model.graph.inputs), list(model.graph.outputs)
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
        axes.update({name: {0: "batch"} for name in outputs})
        fp32 = directory / "fp32.onnx.tmp" if calibration is not None else target
        torch.onnx.export(model.module, example, str(fp32), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=_OPSET, dynamo=False)
        if calibration is not None:
            self.quantizer(fp32, target, calibration)
            fp32.unlink()

    def shares_weights(self, device: str) -> bool:
        return True  # the pre-packed copy is mapped

    def prepare(self, request: Request) -> Path:
        """The export, and beside it the copy whose weights are pre-packed for this CPU (both once per machine)."""
        directory = super().prepare(request)
        exports.ensure(packed_dir(directory), request.lock, lambda staging: prepack(directory, staging),
                       lambda: request.announce(f"onnx {request.dtype} (weights pre-packed for this CPU)"),
                       f"{request.kind} model {request.model}: onnx weights pre-packed")
        return directory

    def compile(self, directory: Path, dtype: str, threads: int) -> Any:
        packed = packed_dir(directory)
        source = packed if exports.manifest(packed) is not None else directory
        options = _options()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = _ort().InferenceSession(str(source / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda feeds: tuple(session.run(None, dict(feeds)))

    def unshared(self, directory: Path, dtype: str) -> str | None:
        if exports.manifest(packed_dir(directory)) is not None:  # what compile() runs, checked the same way
            return None
        return ("ONNX Runtime pre-packs the weights into each process's memory: the copy pre-packed for this CPU "
                f"is missing from {directory} (run `lancedb-baai export` once to write it)")


def packed_dir(directory: Path) -> Path:
    """Where the export in ``directory`` is kept with its weights pre-packed for this CPU's kernels."""
    return directory / f"packed-{isa_tag()}"


def prepack(directory: Path, staging: Path) -> dict[str, Any]:
    """Save the export as ONNX Runtime runs it here: optimised, its weights pre-packed, all in one data file.

    ONNX Runtime reads a model's external data through a memory map, and a model saved
    with its pre-packed weights uses them from that map as they are, so every process on
    the host shares the pages. Without this each process pre-packs a private copy of every
    MatMul weight when it opens the model. The layout depends on the CPU's instruction sets
    (the directory's name carries them).
    """
    ort = _ort()
    options = _options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific layouts
    options.optimized_model_filepath = str(staging / "model.onnx")
    for key, value in (("session.optimized_model_external_initializers_file_name", "weights.data"),
                       ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
                       ("session.save_external_prepacked_constant_initializers", "1")):
        options.add_session_config_entry(key, value)
    ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return {"packed_for": isa_tag()}


def _options() -> Any:
    options = _ort().SessionOptions()
    options.log_severity_level = 3
    return options


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def quantize(source: Path, target: Path, feeds: list[Feeds]) -> None:
    """Dynamic int8 of the linear layers: 7-bit per-channel weights, activations scaled per batch.

    Static int8 (calibrated activation scales) measured top-10 overlap 0.74 on the packaged
    MiniLM; dynamic, 0.92; with the blocks' output projections kept in float (:mod:`.int8`),
    0.93. ``reduce_range`` keeps weights to 7 bits so that CPUs without VNNI (AVX2: u8 x s8
    pairs summed in int16) compute exactly what VNNI does. ``feeds`` are not needed: the
    activations' scales are computed as the graph runs.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    linear = [n.name for n in matmuls if any(i in weights for i in n.input) and not kept_float(n.name)]
    quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=[n.name for n in matmuls if n.name not in linear])


ONNX = register(OnnxRuntime())
