"""Options of every function and reranker: unknown keywords refused, name= accepted, metadata round trips."""

from __future__ import annotations

import json
import logging

import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import lancedb
import lancedb_baai
from lancedb_baai import BAAIReranker, BGEM3Embeddings, BGEM3Reranker
from lancedb_baai.functions.config import METADATA_KEY

REGISTERED = ("local-baai", "local-baai-rerank", "local-baai-m3-colbert")


@pytest.mark.parametrize("registered", REGISTERED)
@pytest.mark.parametrize("typo", [{"dtpye": "float32"}, {"uri": "http://127.0.0.1:1"}])
def test_unknown_keyword_to_a_registered_function_is_refused(registered, typo):
    with pytest.raises(ValueError) as info:
        get_registry().get(registered).create(name="BAAI/bge-m3", **typo)
    message = str(info.value)
    assert f"unknown option {list(typo)}" in message
    assert "valid options are" in message and "'dtype'" in message and "max_retries" not in message


@pytest.mark.parametrize("make", [
    lambda: BAAIReranker("BAAI/bge-reranker-base", colum="text"),
    lambda: BGEM3Reranker("BAAI/bge-m3", nromalize=True),
    lambda: BGEM3Embeddings(name="BAAI/bge-m3", weigths=(1, 1, 1)),
])
def test_unknown_keyword_to_a_reranker_is_refused(make):
    with pytest.raises(ValueError, match="unknown option"):
        make()


@pytest.mark.parametrize("cls, own", [(BAAIReranker, ["column", "function", "model_name", "return_score"]),
                                      (BGEM3Reranker, ["column", "function", "model_name", "return_score", "weights"])])
def test_a_typo_to_a_reranker_lists_its_own_options_and_its_functions(cls, own):
    with pytest.raises(ValueError) as info:
        cls(modelname="BAAI/bge-reranker-base")
    message = str(info.value)
    assert f"unknown option ['modelname'] for {cls.__name__}" in message, message
    assert f"its own options are {own}" in message and "'dtype'" in message and "'name'" in message
    assert "max_retries" not in message


@pytest.mark.parametrize("cls, default", [(BAAIReranker, "BAAI/bge-reranker-base"), (BGEM3Reranker, "BAAI/bge-m3")])
def test_rerankers_take_name_like_the_registered_functions(cls, default):
    assert cls(name="/models/x").function.name == "/models/x"
    assert cls(model_name="/models/x").function.name == "/models/x"
    assert cls("/models/x", name="/models/x").function.name == "/models/x"
    assert cls().function.name == default
    with pytest.raises(ValueError, match="disagree"):
        cls("/models/a", name="/models/b")


def test_bad_return_score_lists_the_accepted_values():
    with pytest.raises(ValueError, match="'relevance' or 'all'"):
        BAAIReranker("BAAI/bge-reranker-base", return_score="scores")


def _stored(table) -> list[dict]:
    return json.loads(table.schema.metadata[b"embedding_functions"])


@pytest.fixture
def table(tmp_path, st_model):
    fn = get_registry().get("local-baai").create(name=str(st_model), dtype="float32")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": "a lambda is an anonymous function"}])
    return table


def test_table_metadata_records_version_device_and_dtype(table):
    stored = _stored(table)[0]["model"]
    assert stored["dtype"] == "float32"
    provenance = stored[METADATA_KEY]
    assert provenance["version"] == lancedb_baai.__version__
    assert (provenance["device"], provenance["dtype"], provenance["dtype_reason"]) == ("cpu", "float32", "asked for")


def test_reopened_table_rebuilds_the_same_function(table, tmp_path):
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    fn = reopened.embedding_functions["vector"].function
    assert fn.dtype == "float32" and fn == table.embedding_functions["vector"].function
    assert reopened.search("anonymous function").limit(1).to_list()[0]["text"].startswith("a lambda")
    assert _stored(reopened)[0]["model"][METADATA_KEY]["version"] == lancedb_baai.__version__


def test_options_written_by_a_newer_version_are_ignored_with_a_warning(table, caplog):
    stored = _stored(table)
    stored[0]["model"]["option_from_the_future"] = 7
    stored[0]["model"][METADATA_KEY]["version"] = "9.0.0"
    with caplog.at_level(logging.WARNING, logger="lancedb_baai"):
        functions = get_registry().parse_functions({b"embedding_functions": json.dumps(stored).encode()})
    assert functions["vector"].function.dtype == "float32"
    assert "option_from_the_future" in caplog.text and "9.0.0" in caplog.text


@pytest.mark.parametrize("registered", ["local-baai-m3-colbert"])
def test_m3_functions_refuse_url_rather_than_ignore_it(registered):
    with pytest.raises(ValueError, match="url= is not supported by the bge-m3 functions"):
        get_registry().get(registered).create(name="BAAI/bge-m3", url="http://127.0.0.1:1")
