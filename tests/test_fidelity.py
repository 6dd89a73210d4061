"""The fidelity gate's embedder measure: near-ties are agreement, real errors are not. No model is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lancedb_baai.models import fidelity as _fidelity

DIMENSIONS = 32  # as the test models: the tie band is 2 * 32 * 2**-24, about 3.8e-6


class FakeEngine:
    """An embedder that returns fixed float32 unit vectors for the gate set's texts."""

    def __init__(self, vectors: np.ndarray) -> None:
        passages, queries = _fidelity.gate_set()
        assert len(vectors) == len(passages) + len(queries)
        self.vectors = dict(zip(passages + queries, _unit(vectors).astype(np.float32)))

    def encode(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        assert normalize
        return np.stack([self.vectors[text] for text in texts])


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _spread(seed: int = 0) -> np.ndarray:
    """Vectors for the gate set in general position: a query's 10th and 11th scores lie about 1e-2 apart."""
    count = sum(len(part) for part in _fidelity.gate_set())
    return _unit(np.random.default_rng(seed).standard_normal((count, DIMENSIONS)))


def _twins(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference vectors in which 60 passages are 30 near-duplicate pairs, and a candidate that swaps each pair.

    Twins lie 1e-6 apart, so every query scores them within 1e-6 of each other and the
    candidate's scores are within 1e-6 of the reference's: a faithful float32 export on a
    corpus with near-duplicates. Where a pair straddles a query's 10th place, the two
    sides return different passages.
    """
    rng = np.random.default_rng(seed + 1)
    reference = _spread(seed)
    first, second = np.arange(0, 60, 2), np.arange(1, 60, 2)
    reference[second] = _unit(reference[first] + 1e-6 * _unit(rng.standard_normal((30, DIMENSIONS))))
    candidate = reference.copy()
    candidate[first], candidate[second] = reference[second], reference[first]
    return reference, candidate


def _measure(reference: np.ndarray, candidate: np.ndarray) -> dict:
    return _fidelity.measure_vectors(FakeEngine(reference), FakeEngine(candidate))


def test_near_ties_swapped_by_a_faithful_candidate_are_agreement():
    reference, candidate = _twins()
    figures = _measure(reference, candidate)
    assert figures["score"] >= _fidelity.THRESHOLDS["float32"], figures
    assert figures["min_cosine"] >= 0.99999 and figures["max_abs_diff"] <= 1e-6
    assert figures["strict_overlap"] < _fidelity.THRESHOLDS["float32"]  # the ties really did swap
    assert figures["score"] == 1.0  # scores within half the band: nothing to forgive but ties


def test_a_random_model_whose_passages_all_score_alike_passes_in_float32():
    """The shape of a tiny random BERT: every vector close to one direction, scores a few float32 steps apart."""
    rng = np.random.default_rng(1)
    count = sum(len(part) for part in _fidelity.gate_set())
    direction = np.eye(DIMENSIONS)[0]
    reference = _unit(direction + 1e-4 * rng.standard_normal((count, DIMENSIONS)))
    candidate = _unit(reference + 2e-6 * rng.standard_normal((count, DIMENSIONS)))
    figures = _measure(reference, candidate)
    assert figures["score"] == 1.0 and figures["min_cosine"] >= 0.99999, figures
    assert figures["strict_overlap"] < 0.95  # what the gate said before: 0.934, refused in float32


@pytest.mark.parametrize("broken", ["one_bit", "noise"])
def test_a_broken_candidate_is_refused(broken):
    reference, _ = _twins()
    if broken == "one_bit":  # every value kept as its sign times the mean magnitude
        candidate = np.sign(reference) * np.abs(reference).mean()
    else:
        candidate = reference + 0.3 * np.random.default_rng(2).standard_normal(reference.shape)
    figures = _measure(reference, candidate)
    assert figures["score"] < _fidelity.THRESHOLDS["int8"], figures
    with pytest.raises(_fidelity.FidelityError, match=r"top-10 overlap 0\.\d+"):
        _fidelity.enforce("broken", figures, "int8", None)


def test_a_collapsed_candidate_among_alike_scores_is_refused_by_its_cosine():
    """Every passage scores alike (within the tie band) and the candidate maps every text to one vector.

    Both top 10s then lie within the band of the other side's 10th, so the overlap is 1.0;
    only the cosine between a text's two vectors shows that the candidate lost the model.
    """
    rng = np.random.default_rng(4)
    count = sum(len(part) for part in _fidelity.gate_set())
    reference = _unit(np.eye(DIMENSIONS)[0] + 1e-8 * rng.standard_normal((count, DIMENSIONS)))
    candidate = np.full((count, DIMENSIONS), 1 / np.sqrt(DIMENSIONS))
    figures = _measure(reference, candidate)
    assert figures["score"] == 1.0 and figures["min_cosine"] < 0.5, figures  # what the overlap alone let through
    for dtype in ("float32", "bfloat16", "int8"):
        assert not _fidelity.passes(figures, dtype, None)
        with pytest.raises(_fidelity.FidelityError, match=r"min cosine 0\.\d+ is below the .* min_fidelity=0"):
            _fidelity.enforce("collapsed", figures, dtype, None)
    assert _fidelity.passes(figures, "int8", 0)  # the stated opt-out accepts it, as it accepts any figures
    _fidelity.enforce("collapsed", figures, "int8", 0)


def test_the_cosine_floors_sit_below_what_faithful_graphs_measure():
    assert _fidelity.MIN_COSINE["float32"] >= 0.999 > _fidelity.MIN_COSINE["bfloat16"] >= _fidelity.MIN_COSINE["int8"]
    faithful = {"metric": "top10_overlap", "score": 0.99, "min_cosine": 0.995, "texts": 250}
    assert _fidelity.passes(faithful, "int8", None) and not _fidelity.passes(faithful, "float32", None)
    reranker = {"metric": "spearman", "score": 0.995, "max_abs_diff": 0.1, "texts": 400}
    assert _fidelity.passes(reranker, "int8", None)  # no cosine for scores: the floor is the embedders'


def test_errors_beyond_float32_resolution_are_not_forgiven():
    """Scores off by about 1e-2, far beyond the band, and no near-ties: the measure is the plain top-10 overlap."""
    reference = _spread()
    candidate = reference + 3e-3 * np.random.default_rng(3).standard_normal(reference.shape)
    figures = _measure(reference, candidate)
    assert figures["max_abs_diff"] > 1000 * figures["tie_band"]
    assert figures["score"] == figures["strict_overlap"] < 1.0


def test_identical_vectors_measure_exactly_one():
    reference, _ = _twins()
    figures = _measure(reference, reference)
    assert figures["score"] == 1.0 and figures["strict_overlap"] == 1.0 and figures["max_abs_diff"] == 0.0
    assert figures["min_cosine"] == pytest.approx(1.0, abs=1e-6) and figures["texts"] == 250


@pytest.mark.parametrize("which", ["twins", "one_bit"])
def test_the_measure_is_symmetric(which):
    """Reference and candidate swap roles without changing a figure: each side's top 10 is judged by the other."""
    reference, candidate = _twins()
    if which == "one_bit":
        candidate = np.sign(reference) * np.abs(reference).mean()
    assert _measure(reference, candidate) == _measure(candidate, reference)


def test_the_band_is_the_float32_rounding_of_two_dot_products():
    unit = 2.0 ** -24
    assert _fidelity.tie_band(384) == pytest.approx(2 * 384 * unit / (1 - 384 * unit))
    assert 4e-5 < _fidelity.tie_band(384) < 5e-5 and _fidelity.tie_band(1024) < 1.3e-4


def test_figures_of_the_former_strict_measure_are_measured_again(tmp_path):
    """A record written before ties counted is stale; reranker figures (Spearman) are not."""
    strict = {"metric": "top10_overlap", "score": 0.93, "min_cosine": 1.0, "texts": 250}
    spearman = {"metric": "spearman", "score": 0.9995, "max_abs_diff": 1e-5, "texts": 400}
    _fidelity.record(tmp_path, "float32", strict)
    _fidelity.record(tmp_path, "int8", spearman)
    assert _fidelity.recorded(tmp_path, "float32") is None
    assert _fidelity.recorded(tmp_path, "int8") == spearman
    current = {**strict, "strict_overlap": 0.93, "score": 1.0}
    _fidelity.record(tmp_path, "float32", current)
    assert _fidelity.recorded(tmp_path, "float32") == current
    assert json.loads((tmp_path / "fidelity.json").read_text())  # the file stays plain JSON


def test_a_cap_on_onednns_instruction_sets_is_another_host(monkeypatch, tmp_path):
    """Figures measured with ``ONEDNN_MAX_CPU_ISA=AVX2`` (other kernels, other int8 results) are not the CPU's own."""
    monkeypatch.delenv(_fidelity.ISA_CAP_ENV, raising=False)
    native = _fidelity.host_id()
    figures = {"metric": "top10_overlap", "score": 0.98, "strict_overlap": 0.98, "min_cosine": 0.99, "texts": 250}
    _fidelity.record(tmp_path, "int8", figures)
    monkeypatch.setenv(_fidelity.ISA_CAP_ENV, "avx2")
    assert _fidelity.host_id() != native
    assert _fidelity.recorded(tmp_path, "int8") is None  # measured again under the cap
    monkeypatch.setenv(_fidelity.ISA_CAP_ENV, "AVX2")
    capped = _fidelity.host_id()
    monkeypatch.delenv(_fidelity.ISA_CAP_ENV)
    assert _fidelity.host_id() == native != capped and _fidelity.recorded(tmp_path, "int8") == figures
