"""The fidelity gate: how close an ONNX Runtime or OpenVINO engine comes to float32 torch, and the verdict.

An exported or quantized graph is a different program from the torch model it came from.
Before it serves, it is compared with float32 torch on a fixed calibration set, the same
on every host: embedders by the mean overlap of each query's 10 nearest passages (what a
search returns) and the lowest cosine between the two vectors of a text; rerankers by the
Spearman correlation of their scores. The figures are recorded next to the export, per
host, so the comparison runs once per machine, and every process reads the same verdict.

The overlap counts near-ties as agreement: a neighbour one side returns agrees when the
other side scores it within float32's resolution of a score (:func:`tie_band`) of its own
10th. Which of two passages that close comes first is decided by rounding, not by the
model; counting them as misses refused exports that reproduce a tiny random model, whose
passages all score alike, to a cosine of 1.00000.

The calibration texts come from ``pydoc_data.topics``, which ships with every Python, so
no dataset has to be downloaded. int8 quantization calibrates on other paragraphs of the
same corpus than the gate measures on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLDS = {"float32": 0.999, "bfloat16": 0.99, "int8": 0.97}
"""Lowest score (embedders: mean top-10 overlap; rerankers: Spearman) each precision must reach by default."""
MIN_COSINE = {"float32": 0.999, "bfloat16": 0.99, "int8": 0.9}
"""Lowest cosine between an embedder's vector of a text and the reference's that each precision allows.

The overlap alone lets a degenerate graph through where every passage scores alike (a tiny
random model): every top 10 then lies within the tie band, whatever the vectors are. The
cosine does not depend on the other texts. The floors sit below what faithful graphs of
the packaged MiniLM measure (fp32 1.00000, bf16 0.998, the shipped int8 0.96 or more).
"""

PASSAGES = 200
QUERIES = 50
PASSAGES_PER_QUERY = 8  # rerankers: (query, passage) pairs scored per query
TOP_K = 10
_RECORD = "fidelity.json"


class FidelityError(RuntimeError):
    """An engine that strays further from float32 torch than its precision allows."""

    def __init__(self, what: str, figures: dict[str, Any], threshold: float, floor: float | None = None) -> None:
        self.figures, self.threshold, self.floor = figures, threshold, floor
        if floor is not None and figures["score"] >= threshold:
            short = (f"its min cosine {figures['min_cosine']:.5f} is below the {floor} its precision allows, "
                     f"though its top-10 overlap {figures['score']:.3f} reaches {threshold}; the overlap "
                     "cannot tell when every passage scores alike. Use another precision or backend "
                     "(fp32 is exact), or accept these figures with min_fidelity=0.")
        else:
            short = (f"below the {threshold} it must reach. Use another precision or backend (fp32 is "
                     f"exact), or accept these figures with min_fidelity=0 (or any value up to "
                     f"{figures['score']:.4f}).")
        super().__init__(f"{what} fails the fidelity gate: {describe(figures)} against torch float32 on "
                         f"{figures['texts']} calibration texts, {short}")


def describe(figures: dict[str, Any]) -> str:
    """The figures in one phrase: ``top-10 overlap 0.984, min cosine 0.99991``."""
    if figures["metric"] == "spearman":
        return f"Spearman {figures['score']:.4f}, max score difference {figures['max_abs_diff']:.3g}"
    return f"top-10 overlap {figures['score']:.3f}, min cosine {figures['min_cosine']:.5f}"


def threshold(dtype: str, min_fidelity: float | None) -> float:
    """The score an engine in ``dtype`` must reach: the asked one, else the precision's default."""
    return THRESHOLDS[dtype] if min_fidelity is None else float(min_fidelity)


def cosine_floor(figures: dict[str, Any], dtype: str, min_fidelity: float | None) -> float | None:
    """The lowest min cosine an embedder in ``dtype`` may show (None: no floor; ``min_fidelity=0`` accepts any)."""
    if figures.get("metric") != "top10_overlap" or min_fidelity == 0:
        return None
    return MIN_COSINE[dtype]


def enforce(what: str, figures: dict[str, Any], dtype: str, min_fidelity: float | None) -> None:
    """Raise :class:`FidelityError` when ``figures`` fall below the threshold, or the cosine floor, for ``dtype``."""
    needed = threshold(dtype, min_fidelity)
    if figures["score"] < needed:
        raise FidelityError(what, figures, needed)
    floor = cosine_floor(figures, dtype, min_fidelity)
    if floor is not None and figures["min_cosine"] < floor:
        raise FidelityError(what, figures, needed, floor)


def passes(figures: dict[str, Any], dtype: str, min_fidelity: float | None) -> bool:
    floor = cosine_floor(figures, dtype, min_fidelity)
    return figures["score"] >= threshold(dtype, min_fidelity) and (floor is None or figures["min_cosine"] >= floor)


@functools.cache
def _paragraphs() -> tuple[str, ...]:
    """Paragraphs of the Python reference topics, in a fixed order, long enough to mean something."""
    from pydoc_data.topics import topics

    seen, out = set(), []
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            text = " ".join(paragraph.split())
            if 80 <= len(text) <= 1500 and text not in seen:
                seen.add(text)
                out.append(text)
    return tuple(out)


@functools.cache
def _topic_names() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(sorted(topics))


def gate_set() -> tuple[list[str], list[str]]:
    """The passages and queries the gate measures on (every other paragraph, and questions on topics)."""
    paragraphs = _paragraphs()
    passages = list(paragraphs[0: 2 * PASSAGES: 2])
    names = _topic_names()
    step = max(1, len(names) // QUERIES)
    queries = [f"How does {name.replace('-', ' ')} work in Python?" for name in names[::step][:QUERIES]]
    return passages, queries


def calibration_texts(count: int = 128) -> list[str]:
    """Texts int8 quantization calibrates on: paragraphs the gate does not measure on."""
    return list(_paragraphs()[1: 2 * count: 2])


def measure_vectors(reference: Any, candidate: Any) -> dict[str, Any]:
    """An embedder against the float32 torch ``reference``: top-10 overlap up to ties, and lowest cosine.

    ``score`` is :func:`overlap` with the :func:`tie_band` of the vectors' dimension;
    ``strict_overlap`` is what the gate measured before: the share of each query's top 10
    both sides return, ties broken by passage order, on scores computed as a search would;
    ``max_abs_diff`` the largest difference between a candidate's and the reference's
    query-passage score. Where ``max_abs_diff`` is at most half the band, ``score`` is 1.
    """
    passages, queries = gate_set()
    texts = passages + queries
    ours, theirs = candidate.encode(texts, normalize=True), reference.encode(texts, normalize=True)
    cosine = np.sum(ours * theirs, axis=1)
    split = len(passages)
    our_scores, their_scores = _scores(ours, split, np.float64), _scores(theirs, split, np.float64)
    band = tie_band(theirs.shape[1])
    pairs = zip(_top_k(_scores(ours, split)), _top_k(_scores(theirs, split)))
    strict = [len(set(a) & set(b)) / TOP_K for a, b in pairs]
    return {"metric": "top10_overlap", "score": round(overlap(their_scores, our_scores, band), 6),
            "strict_overlap": round(float(np.mean(strict)), 6), "tie_band": float(f"{band:.3g}"),
            "max_abs_diff": float(f"{np.abs(our_scores - their_scores).max():.3g}"),
            "min_cosine": round(float(cosine.min()), 6), "texts": len(texts)}


def tie_band(dimensions: int) -> float:
    """The widest gap between two scores that float32 arithmetic alone can reverse.

    A float32 dot product of two unit vectors of ``dimensions`` values is off by at most
    ``gamma = d*u / (1 - d*u)``, u = 2**-24 (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 3.1). Two scores computed that way, each within gamma of its exact value,
    come out in either order when their exact values are within ``2 * gamma``: a search
    over float32 vectors does not say which of the two passages is nearer.
    """
    unit = float(np.finfo(np.float32).eps) / 2
    gamma = dimensions * unit / (1 - dimensions * unit)
    return 2 * gamma


def overlap(reference: np.ndarray, candidate: np.ndarray, band: float) -> float:
    """Mean agreement of two (queries x passages) score matrices on each query's top 10, near-ties counted.

    Each side's top 10 is judged by the other side's scores: a neighbour agrees when the
    other side scores it at most ``band`` below its own 10th. The figure is the share of
    the 20 neighbours that agree, averaged over queries: symmetric in its arguments, 1 for
    equal scores, the plain top-10 overlap when no score lies within ``band`` of a 10th.

    When a query's candidate scores are all within ``e`` of the reference's, a passage one
    side ranks in its top 10 and the other does not is scored by the other within ``2 e``
    of its 10th. So a candidate within ``band / 2`` of the reference scores 1, and that is
    why the band is fixed rather than widened with the candidate's error: a tolerance of
    ``2 e`` would excuse every candidate, however broken.
    """
    return float(np.mean([_agreeing(reference, candidate, band), _agreeing(candidate, reference, band)]))


def _agreeing(judge: np.ndarray, chooser: np.ndarray, band: float) -> np.ndarray:
    """Per query, the share of ``chooser``'s top 10 that ``judge`` scores within ``band`` of its own 10th."""
    tenth = np.partition(judge, -TOP_K, axis=1)[:, -TOP_K:-TOP_K + 1]
    chosen = np.take_along_axis(judge, _top_k(chooser), axis=1)
    return np.mean(chosen >= tenth - band, axis=1)


def _scores(vectors: np.ndarray, split: int, dtype: Any = None) -> np.ndarray:
    """Query-passage scores (queries follow the passages in ``vectors``); float64 adds no rounding of our own."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors[split:] @ vectors[:split].T


def _top_k(scores: np.ndarray) -> np.ndarray:
    """Indices of each query's TOP_K highest-scored passages, one row per query."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]


def measure_scores(reference: Any, candidate: Any) -> dict[str, Any]:
    """A cross-encoder against the float32 torch ``reference``: Spearman of the scores on the gate set's pairs."""
    passages, queries = gate_set()
    ours, theirs = [], []
    for i, query in enumerate(queries):
        chosen = [passages[(i * PASSAGES_PER_QUERY + j) % len(passages)] for j in range(PASSAGES_PER_QUERY)]
        ours.append(candidate.score(query, chosen))
        theirs.append(reference.score(query, chosen))
    a, b = np.concatenate(ours), np.concatenate(theirs)
    return {"metric": "spearman", "score": round(spearman(a, b), 6),
            "max_abs_diff": round(float(np.abs(a - b).max()), 6), "texts": int(a.size)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score arrays (ties ranked by position; scores are continuous)."""
    ranks_a = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    ranks_b = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 1.0 if np.array_equal(ranks_a, ranks_b) else 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"
"""oneDNN's cap on the instruction sets its kernels use (torch's and OpenVINO's): part of what decides the numbers."""


def host_id() -> str:
    """What decides a graph's numbers on this machine: CPU model and instruction sets, OS, architecture.

    A cap on oneDNN's instruction sets (``$ONEDNN_MAX_CPU_ISA``, e.g. AVX2 on an AVX-512 CPU)
    changes the kernels, and int8's results with them, so it makes another host.
    """
    return _host_id(os.environ.get(ISA_CAP_ENV, "").strip().upper())


@functools.cache
def _host_id(isa_cap: str) -> str:
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    token = f"{platform.system()}|{platform.machine()}|{model or platform.processor()}|{flags}"
    if isa_cap:
        token += f"|{ISA_CAP_ENV}={isa_cap}"
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def recorded(export_dir: Path, dtype: str) -> dict[str, Any] | None:
    """The figures measured for the export in ``export_dir`` in ``dtype`` on this host, if any."""
    figures = read_all(export_dir).get(f"{host_id()}/{dtype}")
    if figures and figures.get("metric") == "top10_overlap" and "strict_overlap" not in figures:
        return None  # measured before near-ties counted as agreement: measure again
    return figures


def record(export_dir: Path, dtype: str, figures: dict[str, Any]) -> None:
    """Keep ``figures`` next to the export (atomic write; other hosts' figures are kept)."""
    records = read_all(export_dir)
    records[f"{host_id()}/{dtype}"] = figures
    temporary = export_dir / f".{_RECORD}.{os.getpid()}"
    temporary.write_text(json.dumps(records, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, export_dir / _RECORD)


def read_all(export_dir: Path) -> dict[str, Any]:
    """Every figure recorded for the export in ``export_dir``, by ``"<host>/<dtype>"``."""
    try:
        records = json.loads((export_dir / _RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}
