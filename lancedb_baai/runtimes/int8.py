"""What int8 quantization keeps in float, shared by the ONNX Runtime and OpenVINO quantizers.

Measured on the packaged all-MiniLM-L6-v2 against the fidelity gate (docs/cpu-backends.md,
"int8"): quantizing every linear layer loses the most at each block's two output
projections, the attention output (``attention.output.dense``) and the feed-forward output
(``output.dense``, whose input is the GELU's long-tailed activations). Kept in float, with the query, key,
value and feed-forward input projections in int8, OpenVINO's static int8 went from top-10
overlap 0.95 to 0.97 (the gate's int8 threshold) and ONNX Runtime's dynamic int8 from 0.92
to 0.93. The attention's own products (scores and context, activations times activations)
are never quantized here.
"""

from __future__ import annotations

import re

KEPT_FLOAT = re.compile(r"(^|[./])(attention[./])?output[./]dense([./]|$)")
"""Layer names of the block output projections (BERT / XLM-R naming, as torch exports them)."""


def kept_float(name: str) -> bool:
    """Whether the layer (node) ``name`` stays in float in an int8 graph."""
    return KEPT_FLOAT.search(name) is not None
