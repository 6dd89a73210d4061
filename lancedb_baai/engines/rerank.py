"""The rerank engine: FlagReranker's scores (raw single-label logits, or their sigmoid) for query/passage pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from .base import Engine


class RerankEngine(Engine):
    """A bge cross-encoder on any runtime: the passage is truncated, never the query."""

    truncation: ClassVar[str] = "only_second"

    def score(self, query: str, passages: Sequence[str], *, normalize: bool = False,
              batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Score each passage against ``query`` (float32, in the order given)."""
        out = np.empty(len(passages), dtype=np.float32)
        if not passages:
            return out
        query = self._cap_query(query)
        for index, _, (logits, *_) in self._run([(query, p) for p in passages], batch_size, progress, "reranking"):
            out[index] = logits.reshape(-1)
        return 1.0 / (1.0 + np.exp(-out)) if normalize else out

    def _cap_query(self, query: str) -> str:
        """A very long query cut to 3/4 of ``max_length`` tokens, at a token's end, as FlagReranker does."""
        cap = self.max_length * 3 // 4
        with self._lock:
            offsets = self._counter.encode(query, add_special_tokens=False).offsets
        return query if len(offsets) <= cap else query[: offsets[cap - 1][1]]

    @classmethod
    def calibration_items(cls, texts: list[str]) -> list:
        """Each text paired with the start of another as its query."""
        return list(zip([t[:100] for t in texts[1:] + texts[:1]], texts))
