"""`local-baai`: same vectors as the reference libraries, bge's query rules, config-only objects."""

from __future__ import annotations

import copy
import pickle

import lancedb
import numpy as np
import pytest
from lancedb.embeddings import EmbeddingFunctionConfig, get_registry
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import BAAIEmbeddings, testing
from lancedb_baai.models import hub as _hub
from lancedb_baai.models.catalog import EN_INSTRUCTION, ZH_INSTRUCTION

TEXTS = [
    "hello world",
    "the python function returns a list",
    "error: the module has no attribute name",
    "a",
    "for key in dict: print(key, value) while true: break",
    "what is the difference between a tuple and a list in python code",
]


def make(name, **options) -> BAAIEmbeddings:
    """A `local-baai` function made the way users make it, in float32 on the CPU."""
    options = {"device": "cpu", "dtype": "float32", **options}
    return get_registry().get("local-baai").create(name=str(name), **options)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_distinct(vectors: np.ndarray, below: float = 0.99) -> None:
    """Different texts give clearly different vectors, so a parity check can tell them apart."""
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = normed @ normed.T
    off_diagonal = similarity[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < below


# --- parity with the reference libraries -------------------------------------------------


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + [row["text"] for row in testing.python_reference_paragraphs(limit=6)]
    ours = np.stack(make(minilm).compute_source_embeddings(texts))
    reference = SentenceTransformer(str(minilm), device="cpu").encode(texts, batch_size=8)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert_distinct(ours, below=0.98)


@pytest.mark.parametrize("fixture", ["sharp_st_model", "st_model"])
def test_st_layout_matches_sentence_transformers(fixture, request):
    from sentence_transformers import SentenceTransformer

    path = request.getfixturevalue(fixture)
    ours = np.stack(make(path).compute_source_embeddings(TEXTS))
    reference = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    if fixture == "sharp_st_model":
        assert_distinct(ours)


def test_max_length_truncates_like_sentence_transformers(sharp_st_model):
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(sharp_st_model), device="cpu")
    reference_model.max_seq_length = 8
    ours = np.stack(make(sharp_st_model, max_length=8).compute_source_embeddings(TEXTS))
    np.testing.assert_allclose(ours, reference_model.encode(TEXTS), atol=1e-5)


def _cls_reference(path, texts: list[str]) -> np.ndarray:
    """bge's recipe by hand: transformers AutoModel, last hidden state at [CLS]."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return model(**batch).last_hidden_state[:, 0].numpy()


def test_plain_export_is_cls_pooling_then_l2_normalize(sharp_plain_model):
    cls = _cls_reference(sharp_plain_model, TEXTS)
    ours = np.stack(make(sharp_plain_model).compute_source_embeddings(TEXTS))
    np.testing.assert_allclose(ours, cls / np.linalg.norm(cls, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert_distinct(ours)


def test_normalize_false_gives_raw_cls_vectors(sharp_plain_model):
    cls = _cls_reference(sharp_plain_model, TEXTS)
    ours = np.stack(make(sharp_plain_model, normalize=False).compute_source_embeddings(TEXTS))
    np.testing.assert_allclose(ours, cls, atol=1e-4, rtol=1e-5)
    assert np.abs(np.linalg.norm(ours, axis=1) - 1.0).min() > 0.1


def test_order_and_batch_size_do_not_change_vectors(sharp_st_model):
    """Length-sorted batching scatters results back to the caller's order."""
    texts = TEXTS * 2
    one_at_a_time = np.stack(make(sharp_st_model, batch_size=1).compute_source_embeddings(texts))
    batched = np.stack(make(sharp_st_model, batch_size=4).compute_source_embeddings(texts))
    np.testing.assert_allclose(batched, one_at_a_time, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = np.stack(make(sharp_st_model).compute_source_embeddings([texts[i] for i in order]))
    np.testing.assert_allclose(shuffled, one_at_a_time[order], atol=1e-5)


# --- bge's query instruction -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["BAAI/bge-small-en-v1.5", "BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5"])
def test_english_v15_queries_get_english_instruction(name):
    assert make(name).instruction() == "Represent this sentence for searching relevant passages: "


@pytest.mark.parametrize("name", ["BAAI/bge-small-zh-v1.5", "BAAI/bge-base-zh-v1.5", "BAAI/bge-large-zh-v1.5"])
def test_chinese_v15_queries_get_chinese_instruction(name):
    assert make(name).instruction() == "为这个句子生成表示以用于检索相关文章："


def test_local_chinese_directory_gets_chinese_instruction(zh_model):
    assert str(zh_model).endswith("HF/models/BAAI/bge-base-zh-v1.5")
    assert make(zh_model).instruction() == ZH_INSTRUCTION


@pytest.mark.parametrize("name", ["BAAI/bge-m3", "sentence-transformers/all-MiniLM-L6-v2", "org/unknown"])
def test_m3_and_unknown_models_get_no_instruction(name):
    assert make(name).instruction() == ""


def test_explicit_instruction_wins_and_empty_disables():
    assert make("BAAI/bge-small-en-v1.5", query_instruction="").instruction() == ""
    assert make("BAAI/bge-m3", query_instruction="query: ").instruction() == "query: "


@pytest.mark.parametrize("fixture, instruction", [("sharp_st_model", EN_INSTRUCTION),
                                                  ("zh_model", ZH_INSTRUCTION)])
def test_query_vector_is_instruction_plus_query_as_passage(fixture, instruction, request):
    fn = make(request.getfixturevalue(fixture))
    query = "how do I sort a list"
    as_query = fn.compute_query_embeddings(query)[0]
    np.testing.assert_allclose(as_query, fn.compute_source_embeddings([instruction + query])[0], atol=1e-6)
    bare = fn.compute_source_embeddings([query])[0]
    assert np.abs(as_query - bare).max() > 1e-4


def test_empty_instruction_encodes_query_as_is(sharp_st_model):
    fn = make(sharp_st_model, query_instruction="")
    query = "how do I sort a list"
    np.testing.assert_allclose(fn.compute_query_embeddings(query)[0], fn.compute_source_embeddings([query])[0],
                               atol=1e-6)


def test_table_stores_passages_without_instruction_and_searches_with_it(st_model, tmp_path, monkeypatch):
    fn = make(st_model)
    engine = fn.engine()
    seen: list[str] = []
    encode = engine.encode

    def recording_encode(texts, **kwargs):
        seen.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(engine, "encode", recording_encode)

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    table.add([{"text": "the python function"}, {"text": "a list of int"}])
    assert seen == ["the python function", "a list of int"]
    seen.clear()
    table.search("sort a list").limit(1).to_list()
    assert seen == [EN_INSTRUCTION + "sort a list"]


# --- ndims without weights --------------------------------------------------------------------


@pytest.mark.parametrize("name, dims", [("BAAI/bge-small-en-v1.5", 384), ("BAAI/bge-large-zh-v1.5", 1024),
                                        ("BAAI/bge-m3", 1024)])
def test_ndims_of_hub_ids_comes_from_the_catalog(name, dims, monkeypatch):
    def no_files(*args):
        raise AssertionError("ndims() looked for model files")

    monkeypatch.setattr(_hub, "cached_dir", no_files)
    before = lancedb_baai.load_count()
    assert make(name).ndims() == dims
    assert lancedb_baai.load_count() == before and lancedb_baai.cache_info() == []


def test_ndims_of_directories_comes_from_config_files(st_model, plain_model, minilm):
    before = lancedb_baai.load_count()
    assert make(st_model).ndims() == 32
    assert make(plain_model).ndims() == 32
    assert make(minilm).ndims() == 384
    assert lancedb_baai.load_count() == before and lancedb_baai.cache_info() == []


def test_ndims_agrees_with_the_vectors(sharp_st_model, minilm):
    for path in (sharp_st_model, minilm):
        fn = make(path)
        assert len(fn.compute_source_embeddings(["x"])[0]) == fn.ndims()


# --- configuration only: pickle, deepcopy, LanceDB metadata -----------------------------------


def _metadata_round_trip(fn):
    registry = get_registry()
    config = EmbeddingFunctionConfig(vector_column="vector", source_column="text", function=fn)
    metadata = registry.get_table_metadata([config])
    return registry.parse_functions(metadata)["vector"].function


def test_config_survives_pickle_deepcopy_and_table_metadata(st_model):
    fn = make(st_model, normalize=False, query_instruction="q: ", batch_size=7, max_length=64)
    copies = [pickle.loads(pickle.dumps(fn)), copy.deepcopy(fn), _metadata_round_trip(fn)]
    before = lancedb_baai.load_count()
    engine = fn.engine()
    for other in copies:
        assert type(other) is BAAIEmbeddings
        assert other.model_dump() == fn.model_dump()
        assert other.safe_model_dump() == fn.safe_model_dump()
        assert other.engine_key() == fn.engine_key()
        assert other.engine() is engine
    assert lancedb_baai.load_count() - before == 1


def test_config_holds_no_heavy_state(st_model):
    fn = make(st_model)
    fn.compute_source_embeddings(["x"])
    assert len(pickle.dumps(fn)) < 2000  # a loaded model would be megabytes
    assert all(isinstance(v, (str, int, bool, type(None))) for v in fn.model_dump().values())


# --- bad input ----------------------------------------------------------------------------------


def test_missing_local_path_names_the_path(tmp_path):
    missing = tmp_path / "models" / "bge-small-en-v1.5"
    fn = make(missing)
    with pytest.raises(FileNotFoundError) as info:
        fn.compute_source_embeddings(["x"])
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fn.ndims()


def test_unknown_hub_id_offline_says_it_is_not_available(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fn = make("BAAI/bge-unknown-v9")
    with pytest.raises(_hub.ModelNotAvailableError, match="not available locally") as info:
        fn.compute_source_embeddings(["x"])
    assert "pass name= the path" in str(info.value)
    with pytest.raises(ValueError, match="not in the catalog"):
        fn.ndims()


def test_cross_encoder_directory_is_not_an_embedder(cross_encoder):
    with pytest.raises(ValueError, match="cross-encoder reranker, not an embedding model"):
        make(cross_encoder).compute_source_embeddings(["x"])


@pytest.mark.parametrize("bad, problem", [(None, "is null"), (3, "is a int, not a string"),
                                          (b"bytes", "is a bytes, not a string")])
def test_non_string_source_values_are_refused(bad, problem, st_model):
    with pytest.raises(ValueError, match=f"text at row 1 {problem}"):
        make(st_model).compute_source_embeddings(["fine", bad])


@pytest.mark.parametrize("rows, problem", [
    (["three", None, "four"], "text at row 1 is null"),
    ([7, 8], "text at row 0 is a int, not a string"),
    (["three", 7], "got a 'int'"),  # mixed types: pyarrow refuses them before embedding starts
])
def test_table_add_with_bad_source_writes_nothing(rows, problem, st_model, tmp_path):
    fn = make(st_model)

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    table.add([{"text": "one"}, {"text": "two"}])
    with pytest.raises(Exception, match=problem):
        table.add([{"text": value} for value in rows])
    assert table.count_rows() == 2


def test_a_bytes_row_in_a_table_add_is_not_blamed_on_row_0(st_model, tmp_path):
    """Arrow makes a column of str and bytes binary, so every row reaches the function as bytes."""
    fn = make(st_model)

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    rows = [{"text": f"text {i}"} for i in range(6)]
    rows[4]["text"] = b"bytes"
    with pytest.raises(Exception) as info:
        table.add(rows)
    message = str(info.value)
    assert "row 0" not in message and "text: all 6 rows arrived as bytes" in message, message
    assert "isinstance(value, bytes)" in message and ".decode('utf-8')" in message
    assert table.count_rows() == 0
    with pytest.raises(ValueError, match="text at row 1 is a bytes"):  # without Arrow the row is known
        fn.generate_embeddings(["fine", b"bytes"])


def test_empty_strings_embed_in_a_table(st_model, tmp_path):
    """A table's empty texts get vectors, as sentence-transformers gives them (LanceDB expects them)."""
    fn = make(st_model)
    vectors = fn.compute_source_embeddings(["a", ""])
    assert len(vectors) == 2 and len(vectors[1]) == fn.ndims()


@pytest.mark.parametrize("field, value, accepted", [
    ("dtype", "float8", ["auto", "float32", "float16", "bfloat16"]),
    ("dtype", "fp16", ["float16"]),
    ("device", "tpu", ["auto", "cpu", "cuda", "cuda:N", "mps"]),
    ("device", "cuda:x", ["cuda:N"]),
])
def test_unknown_dtype_or_device_is_refused_at_creation(field, value, accepted):
    with pytest.raises(ValueError) as info:
        get_registry().get("local-baai").create(name="BAAI/bge-small-en-v1.5", **{field: value})
    message = str(info.value)
    assert repr(value) in message
    assert all(repr(option) in message for option in accepted)
    assert lancedb_baai.cache_info() == []


def test_empty_name_is_refused():
    with pytest.raises(ValueError, match="name is empty"):
        make("  ")


def test_tiny_models_embed_any_digits(st_model):
    """Regression: a vocabulary with repeated tokens once gave ids past the embedding table."""
    vectors = make(st_model).compute_source_embeddings(["released in 1989 and 2018"])
    assert len(vectors[0]) == 32


def test_empty_input_gives_empty_result(st_model):
    fn = make(st_model)
    assert fn.compute_source_embeddings([]) == []
    assert fn.generate_embeddings([]) == []


@pytest.mark.parametrize("query", ["", "   ", "\n"])
def test_empty_query_is_a_clear_error(query, st_model):
    with pytest.raises(ValueError, match="query is empty"):
        make(st_model).compute_query_embeddings(query)


@pytest.mark.parametrize("query, shown", [([None], "NoneType"), ([{"a": 1}], "dict"), ([3], "int")])
def test_non_string_query_is_a_clear_error(st_model, query, shown):
    with pytest.raises(ValueError, match=f"query must be a string, got {shown}"):
        make(st_model).compute_query_embeddings(query)
