"""Length-aware batch planning: every input once, within limits, and less padding than fixed batches."""

from __future__ import annotations

import numpy as np
import pytest

from lancedb_baai.engines.batching import MAX_BATCH_TOKENS, pass_cost, plan_batches


def _padded(batches: list[np.ndarray], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def _fixed(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Sorted batches of a fixed count: what the planner must beat."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@pytest.mark.parametrize("seed", range(5))
def test_plan_covers_every_input_once_within_limits(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 600, size=int(rng.integers(1, 400))).tolist()
    batches = list(plan_batches(lengths, batch_size=32, max_tokens=4096))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= 32
        assert len(batch) * max(lengths[i] for i in batch) <= 4096
        # longest first, and each batch's inputs are contiguous in that order
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_one_long_passage_gets_its_own_batch():
    """The rerank case: 49 short candidates and one long one must not pad 31 others to its length."""
    lengths = [40] * 49 + [500]
    batches = list(plan_batches(lengths, batch_size=32))
    assert batches[0].tolist() == [49]
    assert _padded(batches, lengths) == 500 + 49 * 40
    assert _padded(batches, lengths) < _padded(_fixed(lengths, 32), lengths) / 3


@pytest.mark.parametrize("seed", range(5))
def test_plan_costs_no_more_than_fixed_batches(seed):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(4, 0.8, size=300), 1, 512).astype(int).tolist()
    planned = list(plan_batches(lengths, batch_size=32, pass_tokens=128))
    fixed = _fixed(lengths, 32)
    assert len(planned) * 128 + _padded(planned, lengths) <= len(fixed) * 128 + _padded(fixed, lengths)


def test_equal_lengths_fill_whole_batches():
    assert [len(b) for b in plan_batches([64] * 100, batch_size=32)] == [32, 32, 32, 4]


def test_an_input_longer_than_the_budget_still_runs_alone():
    batches = list(plan_batches([MAX_BATCH_TOKENS * 2, 10, 10], batch_size=32))
    assert batches[0].tolist() == [0]
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2]


def test_accelerators_prefer_full_batches():
    assert pass_cost("cpu") < pass_cost("mps") < pass_cost("cuda:0") == pass_cost("cuda")
    lengths = [40] * 60 + [60] * 4
    assert len(list(plan_batches(lengths, 32, pass_tokens=pass_cost("cuda")))) == 2


def test_no_inputs_no_batches():
    assert list(plan_batches([], batch_size=8)) == []
