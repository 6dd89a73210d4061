"""The catalog of known bge models and the query-instruction rules, as plain data."""

from __future__ import annotations

import pytest

from lancedb_baai.models import catalog as _catalog
from lancedb_baai.models.catalog import CATALOG, EN_INSTRUCTION, ZH_INSTRUCTION

# Published widths of the bge models (their config.json hidden_size).
PUBLISHED_DIMS = {
    "BAAI/bge-small-en-v1.5": 384,
    "BAAI/bge-base-en-v1.5": 768,
    "BAAI/bge-large-en-v1.5": 1024,
    "BAAI/bge-small-zh-v1.5": 512,
    "BAAI/bge-base-zh-v1.5": 768,
    "BAAI/bge-large-zh-v1.5": 1024,
    "BAAI/bge-m3": 1024,
}


def test_instruction_strings_are_bge_own():
    assert EN_INSTRUCTION == "Represent this sentence for searching relevant passages: "
    assert ZH_INSTRUCTION == "为这个句子生成表示以用于检索相关文章："


@pytest.mark.parametrize("name, dims", sorted(PUBLISHED_DIMS.items()))
def test_catalog_dims_match_published_models(name, dims):
    assert _catalog.lookup(name).dims == dims


def test_catalog_kinds_and_lengths():
    assert {spec.kind for spec in CATALOG.values()} == {"embed", "rerank", "m3"}
    assert CATALOG["BAAI/bge-m3"].max_length == 8192
    for name, spec in CATALOG.items():
        assert spec.name == name
        if spec.kind == "rerank":
            assert spec.dims is None and spec.query_instruction == ""
        else:
            assert spec.dims is not None and spec.max_length >= 512


def test_catalog_entries_are_frozen():
    with pytest.raises(AttributeError):
        CATALOG["BAAI/bge-small-en-v1.5"].dims = 1  # type: ignore[misc]


def test_lookup_unknown_is_none():
    assert _catalog.lookup("someone/unknown-model") is None
    assert _catalog.lookup("bge-small-en-v1.5") is None  # hub ids only, not base names


@pytest.mark.parametrize("name", [
    "BAAI/bge-small-en-v1.5", "BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5",
    "BAAI/bge-large-en", "/models/BAAI/bge-small-en-v1.5", "/models/BAAI/bge-small-en-v1.5/",
    "./BGE-BASE-EN-V1.5",
])
def test_english_family_gets_english_instruction(name):
    assert _catalog.default_query_instruction(name) == EN_INSTRUCTION


@pytest.mark.parametrize("name", [
    "BAAI/bge-small-zh-v1.5", "BAAI/bge-base-zh-v1.5", "BAAI/bge-large-zh-v1.5",
    "/data/HF/models/BAAI/bge-base-zh-v1.5", "C:\\models\\bge-large-zh-v1.5",
])
def test_chinese_family_gets_chinese_instruction(name):
    assert _catalog.default_query_instruction(name) == ZH_INSTRUCTION


@pytest.mark.parametrize("name", [
    "BAAI/bge-m3", "/models/bge-m3", "sentence-transformers/all-MiniLM-L6-v2",
    "BAAI/bge-reranker-base", "BAAI/bge-reranker-v2-m3", "",
])
def test_m3_rerankers_and_unknown_names_get_no_instruction(name):
    assert _catalog.default_query_instruction(name) == ""


def test_catalog_instructions_agree_with_family_rule():
    for name, spec in CATALOG.items():
        assert spec.query_instruction == _catalog.default_query_instruction(name), name


def test_model_basename():
    assert _catalog.model_basename("BAAI/bge-small-en-v1.5") == "bge-small-en-v1.5"
    assert _catalog.model_basename("/a/b/BGE-Base-ZH-v1.5/") == "bge-base-zh-v1.5"


def test_model_kind_reads_the_files_of_a_local_model(st_model, plain_model, cross_encoder, tmp_path):
    from lancedb_baai import testing

    m3 = testing.build_m3_model(tmp_path / "BAAI" / "bge-m3")
    kinds = {path: _catalog.model_kind(str(path)) for path in (st_model, plain_model, cross_encoder, m3)}
    assert kinds == {st_model: "embed", plain_model: "embed", cross_encoder: "rerank", m3: "m3"}


def test_model_kind_of_a_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty: nothing is cached
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _catalog.model_kind("BAAI/bge-reranker-v2-m3") == "rerank"  # the catalog: no files needed
    assert _catalog.model_kind("BAAI/bge-m3") == "m3"
    assert _catalog.model_kind("someone/not-here") is None  # not in the catalog, no files here: unknown


def test_model_kind_of_a_missing_directory_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _catalog.model_kind(str(tmp_path / "no-such-model"))
