"""Vectors as Arrow columns, without per-row copies: what ``table.add`` and Lance writers take."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def vector_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, dims) matrix as a ``fixed_size_list<float32>[dims]`` array."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def multivector_array(matrices: Sequence[np.ndarray], dims: int) -> pa.ListArray:
    """Per row a (tokens, dims) matrix, as a ``list<fixed_size_list<float32>[dims]>`` array."""
    offsets = np.zeros(len(matrices) + 1, dtype=np.int32)
    np.cumsum([len(m) for m in matrices], out=offsets[1:])
    flat = np.concatenate(matrices) if len(matrices) else np.empty((0, dims), dtype=np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), vector_array(flat.reshape(-1, dims)))
