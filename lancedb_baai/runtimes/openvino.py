"""OpenVINO on the CPU: an OpenVINO IR export of the model (fp32, bf16 where native, or NNCF int8)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .base import Feeds, TorchModel, register
from .device import native_bf16_flags
from .export import ExportRuntime
from .int8 import kept_float
from .streams import Requests, config as stream_config
from .telemetry import openvino_telemetry_off

_PRECISION_HINT = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}  # int8: the graph carries it


class OpenVINORuntime(ExportRuntime):
    """OpenVINO's CPU plugin; a compiled model runs one call per stream at a time (:mod:`.streams`)."""

    name = "openvino"
    module = "openvino"
    extra = "openvino"
    exporters = ("torch", "openvino", "nncf")

    def __init__(self) -> None:
        self.quantizer: Callable[[Any, list[Feeds]], Any] = quantize
        """How the int8 graph is made from the fp32 one."""

    def precisions(self) -> tuple[str, ...]:
        return ("float32", "bfloat16", "int8") if native_bf16() else ("float32", "int8")

    def convert(self, model: TorchModel, example: tuple, directory: Path, calibration: list[Feeds] | None) -> None:
        ov = _openvino()
        converted = ov.convert_model(model.module, example_input=example,
                                     input=[(ov.PartialShape([-1, -1]), ov.Type.i64) for _ in model.graph.inputs])
        for port, name in zip(converted.inputs, model.graph.inputs):  # the module's inputs are positional
            port.get_tensor().set_names({name})
        if calibration is not None:
            converted = self.quantizer(converted, calibration)
        ov.save_model(converted, str(directory / "model.xml"), compress_to_fp16=False)

    def compile(self, directory: Path, dtype: str, threads: int) -> Any:
        ov = _openvino()
        config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[dtype], **stream_config(threads)}
        compiled = ov.Core().compile_model(str(directory / "model.xml"), "CPU", config)
        return Requests(compiled, int(compiled.get_property("NUM_STREAMS")))

    def run_many(self, compiled: Any, batches: Iterable[Feeds]) -> Iterator[tuple[np.ndarray, ...]]:
        return compiled.map(batches)

    def streams(self, compiled: Any) -> int:
        return compiled.count

    def unshared(self, directory: Path, dtype: str) -> str | None:
        return ("OpenVINO's CPU plugin repacks the weights into each process's own memory when it compiles the "
                "model (its model cache is repacked again on import): N worker processes hold N copies. "
                "backend='onnx' or 'torch' share one copy between processes")


def quantize(model: Any, feeds: list[Feeds]) -> Any:
    """NNCF's static int8 for transformers (SmoothQuant, attention kept in float), on the calibration texts.

    The blocks' output projections stay in float (:mod:`.int8`): with them in int8 the
    packaged MiniLM measured top-10 overlap 0.95, below the gate's 0.97.
    """
    import nncf

    kept = [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and kept_float(op.get_friendly_name())]
    return nncf.quantize(model, nncf.Dataset([dict(f) for f in feeds]), model_type=nncf.ModelType.TRANSFORMER,
                         preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds),
                         ignored_scope=nncf.IgnoredScope(names=kept, validate=False))


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (else its bf16 hint silently runs float32)."""
    if not native_bf16_flags() or OPENVINO.missing() is not None:
        return False
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _openvino() -> Any:
    """OpenVINO, imported with its telemetry off for this process (see :mod:`.telemetry`)."""
    openvino_telemetry_off()
    import openvino

    return openvino


OPENVINO = register(OpenVINORuntime())
