"""bge-m3: dense, sparse and ColBERT outputs against FlagEmbedding, in LanceDB tables, from one pass."""

from __future__ import annotations

import copy
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import EmbeddingFunctionConfig, EmbeddingFunctionRegistry, get_registry
from lancedb.pydantic import LanceModel, MultiVector, Vector

import lancedb
import lancedb_baai
from lancedb_baai import lifecycle, testing
from lancedb_baai.engines.batching import pass_cost, plan_batches
from lancedb_baai.functions.m3 import SPARSE_TYPE, BGEM3ColbertEmbeddings, BGEM3Embeddings, BGEM3Reranker, colbert_column, fill_multivectors, maxsim_score, sparse_column

OPTIONS = {"device": "cpu", "dtype": "float32", "batch_size": 4}
TOL = 1e-4
TEXTS = [
    "how do I open a file in python",
    "the list sort method sorts the list in place",
    "",
    "a class is an object; def defines a function that may return a value",
    " ".join(["yield", "from", "async", "await", "loop"] * 40),  # longer than the 128-token limit
    "the list sort method sorts the list in place",
    "x",
    "error exception try except finally raise",
    "PEP 484 added type hints in python 3.5",  # digit pieces sit at the end of the vocabulary
]
QUERY = "sort a list"


@pytest.fixture(scope="session")
def m3_model(models_root):
    """A tiny bge-m3 snapshot: BERT encoder, colbert_linear.pt, sparse_linear.pt, bos/eos set."""
    return testing.build_m3_model(models_root / "BAAI" / "bge-m3")


@pytest.fixture(scope="session")
def other_m3_model(models_root):
    return testing.build_m3_model(models_root / "other" / "bge-m3", seed=7)


@pytest.fixture(scope="session")
def long_m3_model(models_root):
    """A tiny bge-m3 with 1024 positions: room to test past BGEM3FlagModel's 512-token default."""
    return testing.build_m3_model(models_root / "long" / "BAAI" / "bge-m3", max_length=1024, seed=8)


@pytest.fixture(scope="session")
def flag_m3(m3_model, flag_embedding):
    return flag_embedding.BGEM3FlagModel(str(m3_model), use_fp16=False, devices="cpu")


@pytest.fixture(scope="session")
def reference(flag_m3):
    """FlagEmbedding's three outputs for TEXTS (truncated at the tiny model's 128 tokens, as ours)."""
    return flag_m3.encode(TEXTS, batch_size=3, max_length=128, return_dense=True,
                          return_sparse=True, return_colbert_vecs=True)


def functions(model):
    registry = get_registry()
    dense = registry.get("local-baai").create(name=str(model), **OPTIONS)
    colbert = registry.get("local-baai-m3-colbert").create(name=str(model), **OPTIONS)
    return dense, colbert


def two_column_table(tmp_path, model):
    """A table with a dense and a ColBERT column, both embedded from ``text``."""
    dense, colbert = functions(model)

    class Doc(LanceModel):
        text: str
        vector: Vector(dense.ndims())
        colbert: MultiVector(colbert.ndims())

    configs = [EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=dense),
               EmbeddingFunctionConfig(source_column="text", vector_column="colbert", function=colbert)]
    db = lancedb.connect(tmp_path / "db")
    return db, db.create_table("docs", schema=Doc, embedding_functions=configs)


# Parity with FlagEmbedding


def test_three_outputs_match_flagembedding(m3_model, reference, parity):
    out = BGEM3Embeddings(name=str(m3_model), **OPTIONS).encode(TEXTS, dense=True, sparse=True, colbert=True)

    assert out.dense.shape == (len(TEXTS), 32) and out.dense.dtype == np.float32
    parity.check("BGEM3FlagModel dense", out.dense, reference["dense_vecs"], TOL)
    parity.check("BGEM3FlagModel lexical weights", out.sparse, reference["lexical_weights"], TOL)
    assert [len(v) for v in out.colbert] == [len(v) for v in reference["colbert_vecs"]]
    parity.check("BGEM3FlagModel colbert vectors", out.colbert, reference["colbert_vecs"], TOL)
    assert out.colbert[2].shape == (1, 32) and out.sparse[2] == {}  # "" is [CLS] [SEP]: one vector, no weights
    assert sum(len(w) for w in out.sparse) > len(TEXTS)  # the head gives real weights to check


@pytest.mark.slow
def test_beyond_512_tokens_matches_flagembedding_at_the_same_max_length(long_m3_model, flag_embedding, parity):
    texts = [testing.words(900), testing.words(600, offset=5), testing.words(1500, offset=9), "sort a list"]
    flag = flag_embedding.BGEM3FlagModel(str(long_m3_model), use_fp16=False, devices="cpu")
    # max_length None is the model's own limit here (1024), as 8192 is bge-m3's; FlagEmbedding's default is 512.
    ours = BGEM3Embeddings(name=str(long_m3_model), **OPTIONS).encode(texts, dense=True, sparse=True, colbert=True)
    theirs = flag.encode(texts, batch_size=2, max_length=1024, return_dense=True, return_sparse=True,
                         return_colbert_vecs=True)

    assert [len(c) for c in ours.colbert] == [len(c) for c in theirs["colbert_vecs"]] == [901, 601, 1023, 4]
    parity.check("BGEM3FlagModel dense, 1024 tokens", ours.dense, theirs["dense_vecs"], TOL)
    parity.check("BGEM3FlagModel lexical weights, 1024 tokens", ours.sparse, theirs["lexical_weights"], TOL)
    parity.check("BGEM3FlagModel colbert vectors, 1024 tokens", ours.colbert, theirs["colbert_vecs"], TOL)
    at_512 = flag.encode(texts[:1], max_length=512, return_colbert_vecs=True)["colbert_vecs"][0]
    assert len(at_512) == 511 and np.abs(at_512 - ours.colbert[0][:511]).max() > TOL  # the rest of the text counts


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 0.3, 1.0)])
def test_scores_match_flagembedding_compute_score(m3_model, flag_m3, weights, parity):
    ours = BGEM3Embeddings(name=str(m3_model), weights=weights, **OPTIONS).score_modes(QUERY, TEXTS)
    # One pair per batch: FlagEmbedding's batched MaxSim also counts the zero vectors of padding.
    theirs = flag_m3.compute_score([(QUERY, t) for t in TEXTS], batch_size=1, max_query_length=128,
                                   max_passage_length=128, weights_for_different_modes=list(weights))

    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        parity.check(f"BGEM3FlagModel compute_score {key} {weights}", ours[key], theirs[key], TOL)
    assert len(set(np.round(ours["colbert+sparse+dense"], 4))) > 3  # scores tell passages apart


def test_local_baai_on_m3_gives_dense_vectors_from_the_m3_engine(m3_model, reference, parity):
    dense, colbert = functions(m3_model)

    vectors = dense.generate_embeddings(TEXTS)

    assert dense.engine_key() == colbert.engine_key() and dense.engine_key().kind == "m3"
    parity.check("BGEM3FlagModel dense via local-baai", vectors, reference["dense_vecs"], TOL)
    assert dense.ndims() == colbert.ndims() == 32


# One pass, one load


def test_dense_then_colbert_runs_one_pass_per_batch(m3_model, reference, parity):
    dense, colbert = functions(m3_model)  # creating the ColBERT function asks for its vectors with every pass
    engine = dense.engine()

    start = engine.forward_passes
    dense.generate_embeddings(TEXTS)
    after_dense = engine.forward_passes
    multivectors = colbert.generate_embeddings(TEXTS)

    assert after_dense - start == math.ceil(len(TEXTS) / OPTIONS["batch_size"])
    assert engine.forward_passes == after_dense  # the ColBERT column came from the same passes
    parity.check("BGEM3FlagModel colbert via local-baai-m3-colbert", [np.stack(m) for m in multivectors],
                 reference["colbert_vecs"], TOL)
    colbert.generate_embeddings(TEXTS[:3])  # other texts: computed, not served stale
    assert engine.forward_passes == after_dense + 1


def test_table_with_dense_and_colbert_columns_runs_one_pass_per_batch(tmp_path, m3_model, reference, parity):
    _, table = two_column_table(tmp_path, m3_model)
    engine = table.embedding_functions["vector"].function.engine()
    start = engine.forward_passes

    table.add(fill_multivectors(table, [{"text": t} for t in TEXTS]))

    assert engine.forward_passes - start == math.ceil(len(TEXTS) / OPTIONS["batch_size"])
    stored = table.to_arrow()
    parity.check("BGEM3FlagModel dense in a table", np.stack(stored["vector"].to_numpy(zero_copy_only=False)),
                 reference["dense_vecs"], TOL)
    colbert = [np.array(row, dtype=np.float32) for row in stored["colbert"].to_pylist()]
    parity.check("BGEM3FlagModel colbert in a table", colbert, reference["colbert_vecs"], TOL)
    assert [len(c) for c in colbert] == [len(c) for c in reference["colbert_vecs"]]


def test_every_function_on_the_model_shares_one_load(tmp_path, m3_model):
    dense, colbert = functions(m3_model)
    m3 = BGEM3Embeddings(name=str(m3_model), **OPTIONS)
    reranker = BGEM3Reranker(str(m3_model), **OPTIONS)
    loads = lancedb_baai.load_count()

    dense.generate_embeddings(["a"])
    colbert.compute_query_embeddings("b")
    sparse_column(["c"], m3)
    reranker.function.score("d", ["e"])
    pickle.loads(pickle.dumps(colbert)).generate_embeddings(["f"])

    records = lancedb_baai.cache_info()
    assert [(r["kind"], r["loads"]) for r in records] == [("m3", 1)]
    assert lancedb_baai.load_count() - loads == 1 and records[0]["calls"] >= 5


# LanceDB tables


def test_multivector_column_round_trip_and_maxsim_search(tmp_path, m3_model, reference):
    db, table = two_column_table(tmp_path, m3_model)
    table.add(fill_multivectors(table, pa.table({"text": TEXTS})))

    reopened = db.open_table("docs")
    function = reopened.embedding_functions["colbert"].function
    results = (reopened.search(QUERY, vector_column_name="colbert").distance_type("cosine")
               .limit(len(TEXTS)).to_arrow())

    assert isinstance(function, BGEM3ColbertEmbeddings) and function.name == str(m3_model)
    query = np.stack(function.compute_query_embeddings(QUERY)[0])
    expected = {t: len(query) * (1 - maxsim_score(query, c)) for t, c in zip(TEXTS, reference["colbert_vecs"])}
    got = dict(zip(results["text"].to_pylist(), results["_distance"].to_pylist()))
    assert got.keys() == set(TEXTS)
    assert max(abs(got[t] - expected[t]) for t in got) < 1e-3  # LanceDB: sum over query tokens of 1 - best cosine
    assert results["_distance"].to_pylist() == sorted(results["_distance"].to_pylist())


def test_sparse_column_stores_lexical_weights_without_another_pass(tmp_path, m3_model, reference, parity):
    dense, _ = functions(m3_model)

    schema = pa.schema([pa.field("text", pa.string()), pa.field("vector", pa.list_(pa.float32(), dense.ndims())),
                        pa.field("sparse", SPARSE_TYPE)])
    configs = [EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=dense)]
    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=schema, embedding_functions=configs)
    engine = dense.engine()
    start = engine.forward_passes
    column = sparse_column(TEXTS, dense)
    table.add(pa.table({"text": TEXTS, "sparse": column}))

    assert column.type == SPARSE_TYPE
    assert engine.forward_passes - start == math.ceil(len(TEXTS) / OPTIONS["batch_size"])
    stored = [{p["token_id"]: p["weight"] for p in row} for row in table.to_arrow()["sparse"].to_pylist()]
    parity.check("BGEM3FlagModel lexical weights in a table", stored, reference["lexical_weights"], TOL)
    parity.check("BGEM3FlagModel dense beside a sparse column",
                 np.stack(table.to_arrow()["vector"].to_numpy(zero_copy_only=False)), reference["dense_vecs"], TOL)


@pytest.mark.xfail(strict=True, reason="LanceDB 0.40's _append_vector_columns nulls any multi-vector whose "
                   "token count differs from ndims; fill_multivectors works around it")
def test_lancedb_fills_multivector_columns_itself(tmp_path, m3_model):
    _, table = two_column_table(tmp_path, m3_model)
    table.add([{"text": t} for t in TEXTS if t])
    assert table.to_arrow()["colbert"].null_count == 0


# The reranker


@pytest.fixture
def searchable(tmp_path, m3_model):
    from lancedb.index import FTS

    _, table = two_column_table(tmp_path, m3_model)
    rows = [{"text": row["text"]} for row in testing.python_reference_paragraphs(limit=40)]
    table.add(fill_multivectors(table, rows))
    table.create_index("text", config=FTS())
    return table


@pytest.mark.parametrize("query_type", ["vector", "fts", "hybrid", "multivector"])
def test_reranker_scores_are_flagembedding_compute_score(searchable, m3_model, flag_m3, query_type, parity):
    query = "sort the items of a list"
    reranker = BGEM3Reranker(str(m3_model), **OPTIONS)
    if query_type == "multivector":
        search = searchable.search(query, vector_column_name="colbert")
    else:
        search = searchable.search(query, query_type=query_type, vector_column_name="vector")
    results = search.limit(8).rerank(reranker=reranker).to_arrow()

    scores = results["_relevance_score"]
    assert len(results) > 1 and scores.type == pa.float32()
    assert scores.to_pylist() == sorted(scores.to_pylist(), reverse=True)
    assert not {"_distance", "_score"} & set(results.column_names)
    theirs = flag_m3.compute_score([(query, t) for t in results["text"].to_pylist()], batch_size=1,
                                   max_query_length=128, max_passage_length=128,
                                   weights_for_different_modes=[0.4, 0.2, 0.4])["colbert+sparse+dense"]
    parity.check(f"BGEM3Reranker after {query_type} search", scores.to_numpy(), theirs, TOL)


def test_reranker_return_all_keeps_search_scores(searchable, m3_model):
    reranker = BGEM3Reranker(str(m3_model), return_score="all", **OPTIONS)
    search = searchable.search("open a file", vector_column_name="vector").limit(5)
    results = search.rerank(reranker=reranker).to_arrow()

    assert "_distance" in results.column_names and "_relevance_score" in results.column_names
    assert repr(reranker).startswith("BGEM3Reranker(") and "return_score='all'" in repr(reranker)


# Configuration objects and the engine lifecycle


def test_configs_survive_pickle_deepcopy_and_table_metadata(m3_model):
    _, colbert = functions(m3_model)
    registry = EmbeddingFunctionRegistry.get_instance()
    config = EmbeddingFunctionConfig(source_column="text", vector_column="colbert", function=colbert)

    restored = registry.parse_functions(registry.get_table_metadata([config]))["colbert"].function

    assert restored == colbert and pickle.loads(pickle.dumps(colbert)) == colbert
    assert copy.deepcopy(colbert) == colbert
    m3 = BGEM3Embeddings(name=str(m3_model), weights=(1, 0, 1), **OPTIONS)
    assert pickle.loads(pickle.dumps(m3)) == m3
    reranker = pickle.loads(pickle.dumps(BGEM3Reranker(str(m3_model), weights=(1, 0, 1), **OPTIONS)))
    assert reranker.function == m3
    assert lancedb_baai.cache_info() == []  # configuration only: nothing was loaded


def test_ndims_reads_files_without_loading(m3_model):
    _, colbert = functions(m3_model)
    assert colbert.ndims() == 32 and BGEM3Embeddings(name=str(m3_model)).ndims() == 32
    assert lancedb_baai.cache_info() == []


def test_preload_release_and_swap(m3_model, other_m3_model):
    dense, colbert = functions(m3_model)
    record = lifecycle.preload(str(m3_model), kind="m3", **OPTIONS)
    before = colbert.generate_embeddings(["open a file"])[0]
    dense.generate_embeddings(["open a file"])

    assert record["kind"] == "m3" and [r["loads"] for r in lancedb_baai.cache_info()] == [1]
    lifecycle.swap(str(m3_model), str(other_m3_model), kind="m3", **OPTIONS)
    swapped = colbert.generate_embeddings(["open a file"])[0]
    assert len(swapped) == len(before) and not np.allclose(np.stack(swapped), np.stack(before))
    lifecycle.rollback(str(m3_model), kind="m3", **OPTIONS)
    assert np.allclose(np.stack(colbert.generate_embeddings(["open a file"])[0]), np.stack(before))

    released = lifecycle.release(str(m3_model), kind="m3")
    assert [r["kind"] for r in released] == ["m3"] and lancedb_baai.cache_info() == []


def test_import_does_not_load_torch():
    code = "import sys, lancedb_baai, lancedb_baai.functions.m3; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# Bad inputs


def test_missing_head_file_is_named(tmp_path, m3_model):
    broken = shutil.copytree(m3_model, tmp_path / "bge-m3")
    (broken / "sparse_linear.pt").unlink()

    with pytest.raises(FileNotFoundError, match="sparse_linear.pt"):
        BGEM3Embeddings(name=str(broken), **OPTIONS).encode(["a"])


def test_multivector_function_on_a_plain_vector_column_is_refused(tmp_path, m3_model):
    dense, colbert = functions(m3_model)

    class Doc(LanceModel):
        text: str
        vector: Vector(colbert.ndims())

    configs = [EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=colbert)]
    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc, embedding_functions=configs)

    with pytest.raises(ValueError, match=r"plain vector column.*MultiVector\(32\)"):
        fill_multivectors(table, [{"text": "a"}])


def test_sparse_or_colbert_of_a_model_without_heads_is_refused(plain_model):
    plain = get_registry().get("local-baai").create(name=str(plain_model), **OPTIONS)
    with pytest.raises(ValueError, match="not a bge-m3 model"):
        sparse_column(["a"], plain)


def test_empty_and_invalid_inputs(m3_model):
    dense, colbert = functions(m3_model)
    m3 = BGEM3Embeddings(name=str(m3_model), **OPTIONS)

    assert colbert.generate_embeddings([]) == [] and len(sparse_column([], m3)) == 0
    assert colbert_column([], m3).type == pa.list_(pa.list_(pa.float32(), 32))
    assert m3.score_modes("q", [])["colbert+sparse+dense"] == []
    with pytest.raises(ValueError, match="query is empty"):
        colbert.compute_query_embeddings("  ")
    with pytest.raises(ValueError, match="row 1 is null"):
        colbert.generate_embeddings(["a", None])
    with pytest.raises(ValueError, match="nothing to compute"):
        m3.encode(["a"], dense=False)
    with pytest.raises(ValueError, match="non-negative"):
        BGEM3Embeddings(name=str(m3_model), weights=(1, -1, 1))


@pytest.mark.slow
def test_example_runs(tmp_path):
    """examples/m3_hybrid.py end to end on a tiny model (no bge-m3 download here)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    script = Path(__file__).parents[1] / "examples" / "m3_hybrid.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(script), "--tiny", "--limit", "40", "--top", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny random bge-m3-shaped model" in done.stdout and "indexed 40 paragraphs" in done.stdout
    # one pass per planned batch serves both columns (two columns on their own would take twice that)
    tokenizer = AutoTokenizer.from_pretrained(testing.build_m3_model(tmp_path / "same-tiny", hidden=64, max_length=256))
    texts = [row["text"] for row in testing.python_reference_paragraphs(limit=40)]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    batches = len(list(plan_batches(lengths, 32, pass_tokens=pass_cost("cpu"))))
    assert f" {batches} forward passes for two embedding columns" in done.stdout
    assert done.stdout.count("_relevance_score=") == 3


def test_second_vectorfield_on_one_sourcefield_is_caught(tmp_path, m3_model):
    """The natural two-VectorField schema loses the ColBERT function; fill_multivectors says how to declare it."""
    dense, colbert_fn = functions(m3_model)

    class Doc(LanceModel):
        text: str = dense.SourceField()
        vector: Vector(dense.ndims()) = dense.VectorField()
        colbert: MultiVector(colbert_fn.ndims()) = colbert_fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    assert list(table.embedding_functions) == ["vector"]  # what LanceDB keeps of that schema
    with pytest.raises(ValueError) as info:
        fill_multivectors(table, [{"text": "sort a list"}])
    message = str(info.value)
    assert "column 'colbert' holds multi-vectors but has no embedding function" in message
    assert "EmbeddingFunctionConfig(source_column='text', vector_column='colbert', function=colbert)" in message
    assert table.count_rows() == 0


def test_two_function_configs_pass_the_declaration_check(tmp_path, m3_model):
    _, table = two_column_table(tmp_path, m3_model)
    table.add(fill_multivectors(table, [{"text": "sort a list"}]))
    assert table.count_rows() == 1
