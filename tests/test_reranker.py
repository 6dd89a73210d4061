"""`local-baai-rerank` and BAAIReranker: FlagReranker's scores, LanceDB's rerank contract."""

from __future__ import annotations

import pickle

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import get_registry
from lancedb.index import FTS
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import BAAIRerankFunction, BAAIReranker
from lancedb_baai.testing import words

QUERY = "how do I sort a list in python"
PASSAGES = [
    "sort the list with the sort method or the sorted function",
    "a dict maps each key to a value",
    "the python import statement loads a module",
    "an exception is raised when an error occurs in the code",
    "a tuple is like a list but it can not change",
    "async def makes a function that you await",
    "",
    "to read a file open it and call read",
]
CORPUS = [
    "sort the list with the sort method or the sorted function",
    "a list is a sequence of values in python",
    "a dict maps each key to a value",
    "the python import statement loads a module from a package",
    "an exception is raised when an error occurs in the code",
    "a tuple is like a list but it can not change",
    "async def makes a function that you can await",
    "to read a file open it and call read on the file object",
    "a for loop walks over each item of a list",
    "the lambda keyword makes a small anonymous function",
    "the global statement names a variable of the module scope",
    "string slice syntax returns part of the text",
]


def make_function(path, **options) -> BAAIRerankFunction:
    options = {"device": "cpu", "dtype": "float32", **options}
    return get_registry().get("local-baai-rerank").create(name=str(path), **options)


@pytest.fixture(scope="module")
def flag_reranker(sharp_cross_encoder, flag_embedding):
    """FlagEmbedding's own reranker on the same directory: the reference for bge semantics."""
    return flag_embedding.FlagReranker(str(sharp_cross_encoder), use_fp16=False, devices="cpu", max_length=128)


# --- scores equal the reference implementations ------------------------------------------------


def _transformers_logits(path, query: str, passages: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        batch = tokenizer([query] * len(passages), passages, padding=True, truncation="only_second",
                          max_length=128, return_tensors="pt")
        return model(**batch).logits.view(-1).numpy()


def test_scores_are_the_classifier_logits(sharp_cross_encoder):
    scores = np.array(make_function(sharp_cross_encoder).score(QUERY, PASSAGES))
    reference = _transformers_logits(sharp_cross_encoder, QUERY, PASSAGES)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert np.ptp(reference) > 0.5  # the passages really score differently


def test_scores_equal_cross_encoder_predict_without_activation(sharp_cross_encoder):
    import torch
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(sharp_cross_encoder), device="cpu", activation_fn=torch.nn.Identity())
    expected = reference.predict([(QUERY, p) for p in PASSAGES])
    np.testing.assert_allclose(make_function(sharp_cross_encoder).score(QUERY, PASSAGES), expected, atol=1e-4)


@pytest.mark.slow
def test_scores_equal_flag_reranker(sharp_cross_encoder, flag_reranker, parity):
    # FlagReranker encodes an empty passage as a single sentence ([CLS] q [SEP], no second
    # [SEP]); the tokenizer's pair encoding, which transformers and CrossEncoder agree on, keeps it.
    passages = [p for p in PASSAGES if p]
    pairs = [[QUERY, p] for p in passages]
    raw = make_function(sharp_cross_encoder).score(QUERY, passages)
    parity.check("FlagReranker raw scores", raw, flag_reranker.compute_score(pairs), 1e-4)
    normalized = make_function(sharp_cross_encoder, normalize=True).score(QUERY, passages)
    parity.check("FlagReranker normalized scores", normalized, flag_reranker.compute_score(pairs, normalize=True), 1e-5)


def test_normalize_is_sigmoid_of_the_logit(sharp_cross_encoder):
    logits = np.array(make_function(sharp_cross_encoder).score(QUERY, PASSAGES), dtype=np.float64)
    normalized = np.array(make_function(sharp_cross_encoder, normalize=True).score(QUERY, PASSAGES))
    np.testing.assert_allclose(normalized, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert ((normalized > 0) & (normalized < 1)).all()


def test_batch_size_and_order_do_not_change_scores(sharp_cross_encoder):
    one = np.array(make_function(sharp_cross_encoder, batch_size=1).score(QUERY, PASSAGES))
    many = np.array(make_function(sharp_cross_encoder, batch_size=3).score(QUERY, PASSAGES[::-1]))
    np.testing.assert_allclose(many[::-1], one, atol=1e-5)


def test_empty_passage_list_scores_nothing(sharp_cross_encoder):
    assert make_function(sharp_cross_encoder).score(QUERY, []) == []


# --- truncation: the passage gives way, never the query ---------------------------------------


def test_long_passage_is_truncated_not_an_error(sharp_cross_encoder):
    fn = make_function(sharp_cross_encoder)
    query = "python function"  # two tokens
    very_long = words(3000)
    fitting = words(128 - 2 - 3)  # [CLS] query [SEP] passage [SEP] in 128 tokens
    long_score, fit_score, short_score = fn.score(query, [very_long, fitting, words(20)])
    assert long_score == pytest.approx(fit_score, abs=1e-5)
    assert abs(long_score - short_score) > 1e-3  # the kept tokens matter


def test_long_query_is_capped_rather_than_raising(sharp_cross_encoder):
    fn = make_function(sharp_cross_encoder)
    passage = "sort the list"
    long_query = words(400, offset=7)
    capped = words(128 * 3 // 4, offset=7)  # FlagReranker's cap: 3/4 of max_length
    assert fn.score(long_query, [passage]) == pytest.approx(fn.score(capped, [passage]), abs=1e-5)


@pytest.mark.slow
def test_truncation_matches_flag_reranker(sharp_cross_encoder, flag_reranker, parity):
    pairs = [["python function", words(3000)], [words(400, offset=7), "sort the list"],
             [words(400, offset=3), words(3000, offset=11)]]
    fn = make_function(sharp_cross_encoder)
    ours = [fn.score(q, [p])[0] for q, p in pairs]
    parity.check("FlagReranker long passage / long query", ours, flag_reranker.compute_score(pairs), 1e-4)


# --- BAAIReranker on a real LanceDB table ------------------------------------------------------


@pytest.fixture
def table(st_model, tmp_path):
    embed = get_registry().get("local-baai").create(name=str(st_model), device="cpu", dtype="float32")

    class Doc(LanceModel):
        text: str = embed.SourceField()
        vector: Vector(embed.ndims()) = embed.VectorField()
        plain: Vector(embed.ndims())

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    rng = np.random.default_rng(0)
    table.add([{"text": t, "plain": rng.normal(size=embed.ndims()).tolist()} for t in CORPUS])
    table.create_index("text", config=FTS())
    return table


def _search(table, kind: str):
    if kind == "vector":
        return table.search(QUERY, query_type="vector", vector_column_name="vector").limit(6)
    if kind == "fts":
        return table.search("list function", query_type="fts").limit(6)
    return table.search(QUERY, query_type="hybrid", vector_column_name="vector").limit(6)


def assert_reranked(result: pa.Table, fn: BAAIRerankFunction, query: str) -> None:
    """``_relevance_score`` is float32, sorted descending, and is ``score()`` of each row's text."""
    assert result.schema.field("_relevance_score").type == pa.float32()
    scores = np.array(result["_relevance_score"].to_pylist(), dtype=np.float32)
    assert (np.diff(scores) <= 0).all()
    texts = result["text"].to_pylist()
    expected = np.array(fn.score(query, texts), dtype=np.float32)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert texts == [texts[i] for i in np.argsort(-expected, kind="stable")]


@pytest.mark.parametrize("kind, native", [("vector", {"_distance"}), ("fts", {"_score"}),
                                          ("hybrid", {"_distance", "_score"})])
@pytest.mark.parametrize("return_score", ["relevance", "all"])
def test_rerank_search_results(table, sharp_cross_encoder, kind, native, return_score):
    fn = make_function(sharp_cross_encoder)
    query = "list function" if kind == "fts" else QUERY
    result = _search(table, kind).rerank(reranker=fn.reranker(return_score=return_score)).to_arrow()
    assert len(result) >= 2
    assert_reranked(result, fn, query)
    present = native & set(result.column_names)
    assert present == (native if return_score == "all" else set())


def test_rerank_multivector(table, sharp_cross_encoder):
    reranker = BAAIReranker(str(sharp_cross_encoder), device="cpu", dtype="float32")
    by_text = table.search(QUERY, vector_column_name="vector").limit(5).with_row_id(True).to_arrow()
    probe = np.random.default_rng(1).normal(size=32).tolist()
    by_plain = table.search(probe, vector_column_name="plain").limit(5).with_row_id(True).to_arrow()
    result = reranker.rerank_multivector([by_text, by_plain], QUERY, deduplicate=True)
    row_ids = result["_rowid"].to_pylist()
    assert len(row_ids) == len(set(row_ids)) == len(set(by_text["_rowid"].to_pylist()) |
                                                   set(by_plain["_rowid"].to_pylist()))
    assert "_distance" not in result.column_names
    assert_reranked(result, reranker.function, QUERY)


def test_rerank_function_makes_a_configured_reranker(sharp_cross_encoder):
    fn = make_function(sharp_cross_encoder, normalize=True)
    reranker = fn.reranker(column="body", return_score="all")
    assert isinstance(reranker, BAAIReranker)
    assert reranker.function is fn and reranker.column == "body" and reranker.score == "all"
    assert "column='body'" in repr(reranker) and "normalize=True" in repr(reranker)
    scored = reranker.rerank_vector(QUERY, pa.table({"body": PASSAGES[:3], "_distance": [0.1, 0.2, 0.3]}))
    assert scored.column_names == ["body", "_distance", "_relevance_score"]
    assert all(0 < s < 1 for s in scored["_relevance_score"].to_pylist())


def test_reranker_options_reach_the_function(sharp_cross_encoder):
    reranker = BAAIReranker(str(sharp_cross_encoder), column="body", dtype="float32", device="cpu",
                            batch_size=4, normalize=True)
    assert reranker.function.model_dump(include={"dtype", "device", "batch_size", "normalize"}) == {
        "dtype": "float32", "device": "cpu", "batch_size": 4, "normalize": True}


def test_rerankers_and_pickled_copies_share_one_engine(sharp_cross_encoder):
    before = lancedb_baai.load_count()
    rerankers = [BAAIReranker(str(sharp_cross_encoder), device="cpu", dtype="float32") for _ in range(5)]
    rerankers += [pickle.loads(pickle.dumps(r)) for r in rerankers]
    results = pa.table({"text": PASSAGES[:4]})
    outputs = [r.rerank_vector(QUERY, results)["_relevance_score"].to_pylist() for r in rerankers]
    assert lancedb_baai.load_count() - before == 1
    assert all(o == outputs[0] for o in outputs)
    (record,) = lancedb_baai.cache_info()
    assert record["kind"] == "rerank" and record["loads"] == 1 and record["calls"] == 10


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def reranker(sharp_cross_encoder) -> BAAIReranker:
    return BAAIReranker(str(sharp_cross_encoder), device="cpu", dtype="float32")


def test_empty_results_give_an_empty_table_with_relevance(reranker, table):
    empty = reranker.rerank_vector(QUERY, pa.table({"text": pa.array([], pa.string()),
                                                    "_distance": pa.array([], pa.float32())}))
    assert len(empty) == 0 and empty.schema.field("_relevance_score").type == pa.float32()
    assert "_distance" not in empty.column_names
    search = table.search(QUERY, vector_column_name="vector").where("text = 'no such text'")
    result = search.rerank(reranker=reranker).to_arrow()
    assert len(result) == 0 and "_relevance_score" in result.column_names


def test_missing_text_column_names_it_and_the_columns(reranker):
    results = pa.table({"id": [1, 2], "body": ["a", "b"]})
    with pytest.raises(ValueError) as info:
        reranker.rerank_vector(QUERY, results)
    message = str(info.value)
    assert "'text' not found" in message and "['id', 'body']" in message and "column=" in message


def test_null_passages_are_kept_and_ranked_last(reranker):
    results = pa.table({"text": [PASSAGES[0], None, PASSAGES[1], None, PASSAGES[2]], "id": [0, 1, 2, 3, 4]})
    out = reranker.rerank_vector(QUERY, results)
    assert len(out) == 5
    assert out["id"].to_pylist()[-2:] in ([1, 3], [3, 1])
    scores = out["_relevance_score"].to_pylist()
    assert scores[-2:] == [None, None] and None not in scores[:3]
    expected = reranker.function.score(QUERY, PASSAGES[:3])
    assert sorted(scores[:3], reverse=True) == scores[:3]
    np.testing.assert_allclose(sorted(scores[:3]), sorted(expected), atol=1e-5)


def test_all_null_passages_keep_every_row_unscored(reranker):
    out = reranker.rerank_vector(QUERY, pa.table({"text": pa.array([None, None], pa.string()), "id": [0, 1]}))
    assert sorted(out["id"].to_pylist()) == [0, 1]
    assert out["_relevance_score"].to_pylist() == [None, None]


def test_non_string_passages_are_a_clear_error(reranker):
    with pytest.raises(ValueError, match=r"row 1 is a int, not a string"):
        reranker.rerank_vector(QUERY, pa.table({"text": [None, 5, 6]}))
    with pytest.raises(ValueError, match=r"passage at row 0 is a int"):
        reranker.function.score(QUERY, [3])


@pytest.mark.parametrize("query", ["", "  "])
def test_empty_query_is_a_clear_error(reranker, query):
    with pytest.raises(ValueError, match="query is empty"):
        reranker.rerank_vector(query, pa.table({"text": ["a"]}))
    with pytest.raises(ValueError, match="query is empty"):
        reranker.function.score(query, ["a"])


def test_non_string_query_is_a_clear_error(reranker):
    with pytest.raises(ValueError, match="query must be a string"):
        reranker.function.score(None, ["a"])  # type: ignore[arg-type]


def test_embedder_directory_is_not_a_cross_encoder(st_model):
    with pytest.raises(ValueError, match="not a cross-encoder") as info:
        make_function(st_model).score(QUERY, ["a"])
    assert str(st_model) in str(info.value) and "local-baai" in str(info.value)


def test_rerank_function_refuses_to_embed(sharp_cross_encoder):
    fn = make_function(sharp_cross_encoder)
    for call in (lambda: fn.compute_source_embeddings(["a"]), lambda: fn.compute_query_embeddings("a"),
                 lambda: fn.compute_source_embeddings_with_retry(["a"]), fn.ndims):
        with pytest.raises(TypeError, match="is a cross-encoder reranker, not an embedding function"):
            call()
    with pytest.raises(TypeError, match="reranker"):
        class Doc(LanceModel):
            text: str = fn.SourceField()
            vector: Vector(fn.ndims()) = fn.VectorField()
    assert lancedb_baai.cache_info() == []


def test_bad_return_score_is_refused(sharp_cross_encoder):
    with pytest.raises(ValueError, match="relevance"):
        BAAIReranker(str(sharp_cross_encoder), return_score="distance")  # type: ignore[arg-type]
