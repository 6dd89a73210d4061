"""Length-aware batches: sort by token length, fill each batch up to a token budget."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

MAX_BATCH_TOKENS = 16384
"""Padded tokens per forward pass at most: bounds activation memory for long inputs."""


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS
) -> Iterator[np.ndarray]:
    """Yield index arrays, longest inputs first, so each batch pads only to near-equal lengths.

    A batch holds at most ``batch_size`` inputs and at most ``max_tokens`` padded tokens
    (always at least one input). Callers scatter results back by these indices, which
    restores the original order.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        count = max(1, min(batch_size, max_tokens // longest))
        yield order[start : start + count]
        start += count
