"""The embedding engine: texts in, float32 vectors out (pooled in the graph, normalised here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Engine, unit_rows


class EmbeddingEngine(Engine):
    """A bge embedder on any runtime: (n, dims) float32 vectors in the order given."""

    def encode(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (already prefixed with any instruction) as an (n, dims) float32 array."""
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        for index, _, (vectors, *_) in self._run(list(texts), batch_size, progress, "embedding"):
            out[index] = vectors
        return unit_rows(out) if normalize else out
