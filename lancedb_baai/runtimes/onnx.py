"""ONNX Runtime on the CPU: an ONNX export of the model (fp32, or int8 from static quantization)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Feeds, TorchModel, register
from .export import ExportRuntime

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

    def compile(self, directory: Path, dtype: str, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda feeds: tuple(session.run(None, dict(feeds)))


def quantize(source: Path, target: Path, feeds: list[Feeds]) -> None:
    """Static int8 (QDQ, per channel) of the MatMuls, calibrated on the packaged calibration texts."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            feed = next(self._feeds, None)
            return None if feed is None else dict(feed)

    quantize_static(str(source), str(target), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


ONNX = register(OnnxRuntime())
