"""lancedb_baai against committed reference outputs (tests/golden), so either env catches a regression.

The goldens were produced by FlagEmbedding and sentence-transformers (their versions are in
each file) on committed tiny weights; tests/golden/regenerate.py makes them anew on purpose.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from lancedb.embeddings import get_registry

from lancedb_baai import BAAIEmbeddings
from lancedb_baai.functions.m3 import BGEM3Embeddings

_SPEC = importlib.util.spec_from_file_location("golden_regenerate", Path(__file__).parent / "golden" / "regenerate.py")
G = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(G)

OPTIONS = {"device": "cpu", "dtype": "float32"}
TOL = 1e-4


def test_flag_reranker_scores_raw_normalized_and_truncated(parity):
    golden = G.load("flag_reranker")
    raw_fn = get_registry().get("local-baai-rerank").create(name=str(G.RERANKER), **OPTIONS)
    normalized_fn = get_registry().get("local-baai-rerank").create(name=str(G.RERANKER), normalize=True, **OPTIONS)
    pairs = list(zip(golden["queries"].tolist(), golden["passages"].tolist()))

    raw = [raw_fn.score(q, [p])[0] for q, p in pairs]
    normalized = [normalized_fn.score(q, [p])[0] for q, p in pairs]

    assert max(len(p.split()) for _, p in pairs) > G.MAX_LENGTH and np.ptp(golden["raw"]) > 0.5
    parity.check("golden FlagReranker raw scores (incl. long passage/query)", raw, golden["raw"], TOL)
    parity.check("golden FlagReranker normalized scores", normalized, golden["normalized"], TOL)


def test_flag_model_query_instruction_and_passages(parity):
    golden = G.load("flag_model")
    fn = BAAIEmbeddings(name=str(G.EMBEDDER), **OPTIONS)

    queries = [fn.compute_query_embeddings(q)[0] for q in golden["queries"].tolist()]
    passages = fn.generate_embeddings(golden["passages"].tolist())

    assert fn.instruction() == G.INSTRUCTION  # picked by the directory's family name
    parity.check("golden FlagModel encode_queries (with instruction)", np.stack(queries), golden["query_vectors"], TOL)
    parity.check("golden FlagModel encode_corpus", np.stack(passages), golden["passage_vectors"], TOL)


@pytest.mark.parametrize("name, path", [("bgem3", G.M3), ("bgem3_long", G.LONG_M3)])
def test_bgem3_dense_sparse_colbert_and_scores(name, path, parity):
    golden = G.load(name)
    texts = golden["texts"].tolist()
    m3 = BGEM3Embeddings(name=str(path), weights=G.M3_WEIGHTS, max_length=int(golden["max_length"]), batch_size=4,
                         **OPTIONS)

    out = m3.encode(texts, dense=True, sparse=True, colbert=True)
    scores = m3.score_modes(texts[-1], texts)

    parity.check(f"golden BGEM3FlagModel dense ({name})", out.dense, golden["dense"], TOL)
    parity.check(f"golden BGEM3FlagModel lexical weights ({name})", out.sparse, G.sparse_dicts(golden), TOL)
    parity.check(f"golden BGEM3FlagModel colbert vectors ({name})", out.colbert, G.unragged(golden, "colbert"), TOL)
    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        parity.check(f"golden BGEM3FlagModel compute_score {key} ({name})", scores[key], golden[f"score_{key}"], TOL)
    assert max(golden["colbert_counts"]) == int(golden["max_length"]) - 1  # a text reached the limit


def test_minilm_matches_sentence_transformers_on_python_paragraphs(minilm, parity):
    golden = G.load("minilm")
    fn = BAAIEmbeddings(name=str(minilm), **OPTIONS)

    vectors = np.stack(fn.generate_embeddings(golden["texts"].tolist()))

    assert vectors.shape == (50, 384)
    parity.check("golden sentence-transformers all-MiniLM-L6-v2, 50 paragraphs", vectors, golden["vectors"], TOL)


def test_goldens_say_where_they_come_from_and_stay_small():
    for name in G.GOLDENS:
        versions = G.load(name)["versions"]
        assert versions["by"] == "tests/golden/regenerate.py"
        assert versions["transformers"].startswith("4.57.") and versions["FlagEmbedding"] == "1.4.2"
    total = sum(f.stat().st_size for f in G.GOLDEN.rglob("*") if f.is_file())
    assert total < 4 * 2**20, f"tests/golden holds {total / 2**20:.1f} MiB; keep fixtures small"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(G.GOLDENS))
def test_references_still_give_the_goldens(name, flag_embedding, parity):
    """In the reference env: the committed files are what the reference libraries give today."""
    golden, today = G.load(name), G.GOLDENS[name]()

    assert set(today) == set(golden) - {"versions"}
    floats = [key for key, value in today.items() if value.dtype.kind == "f"]
    for key in set(today) - set(floats):
        assert np.array_equal(today[key], golden[key]), key
    assert all(today[key].shape == golden[key].shape for key in floats)
    parity.check(f"reference today vs committed golden {name}", np.concatenate([today[k].ravel() for k in floats]),
                 np.concatenate([golden[k].ravel() for k in floats]), 1e-5)
