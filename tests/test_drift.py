"""Tables that know their model: the fingerprint in the metadata, describe(), and the drift guard."""

from __future__ import annotations

import json
import logging
import shutil

import lancedb
import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import EmbeddingDriftError, testing
from lancedb_baai.functions.config import METADATA_KEY

from _tables import text_table

# LanceDB embeds rows inside its (Rust) write stream, which reports a Python error as a RuntimeError with its text.
ADD_ERRORS = (EmbeddingDriftError, RuntimeError)
ROWS = [{"text": "a lambda is an anonymous function"}, {"text": "lists are mutable sequences"}]


def make_table(db_path, model_path, **options):
    fn = get_registry().get("local-baai").create(name=str(model_path), dtype="float32", **options)
    return text_table(db_path, fn, ROWS)


def reopen(db_path):
    return lancedb.connect(db_path).open_table("docs")


def stored_functions(table) -> list[dict]:
    return json.loads(table.schema.metadata[b"embedding_functions"])


def rewrite_functions(table, functions: list[dict]) -> None:
    table.to_lance().update_schema_metadata({"embedding_functions": json.dumps(functions)})


@pytest.fixture
def own_model(st_model, tmp_path):
    """A copy of the tiny embedder that a test may re-export."""
    return shutil.copytree(st_model, tmp_path / "models" / "bge-small-en-v1.5")


def test_the_table_records_the_fingerprint_and_keeps_it_on_reopen(tmp_path, own_model):
    table = make_table(tmp_path / "db", own_model)
    recorded = stored_functions(table)[0]["model"][METADATA_KEY]["fingerprint"]
    expected = lancedb_baai.BAAIEmbeddings(name=str(own_model), dtype="float32").fingerprint()
    assert recorded == expected
    assert stored_functions(reopen(tmp_path / "db"))[0]["model"][METADATA_KEY]["fingerprint"] == recorded


def test_describe_reports_each_column_and_its_status(tmp_path, own_model):
    table = make_table(tmp_path / "db", own_model)
    [row] = lancedb_baai.describe(reopen(tmp_path / "db"))
    assert (row["vector_column"], row["source_column"], row["function"]) == ("vector", "text", "local-baai")
    assert row["status"] == "ok" and row["fingerprint"]["dims"] == 32
    assert row["written_by"] == lancedb_baai.__version__
    assert "vector" in str(lancedb_baai.describe(table)) and "ok" in str(lancedb_baai.describe(table))


def test_a_reexported_model_makes_search_and_add_fail_until_allowed(tmp_path, own_model, monkeypatch):
    make_table(tmp_path / "db", own_model)
    lancedb_baai.release()
    testing.build_st_embedder(own_model, seed=9)  # fine-tuned again, saved over the same directory
    table = reopen(tmp_path / "db")
    assert lancedb_baai.describe(table)[0]["status"] == "drift: weights"
    with pytest.raises(EmbeddingDriftError, match="differs in weights") as caught:
        table.search("anonymous function").limit(1).to_list()
    assert "reembed" in str(caught.value) and "on_drift='warn'" in str(caught.value)
    assert caught.value.differences == ["weights"]
    with pytest.raises(ADD_ERRORS, match="embedding drift"):
        table.add([{"text": "one more row"}])
    assert reopen(tmp_path / "db").count_rows() == len(ROWS)  # nothing was written
    monkeypatch.setenv("LANCEDB_BAAI_ON_DRIFT", "warn")
    assert len(reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()) == 1


def test_swap_makes_tables_of_the_old_model_fail_and_rollback_restores_them(tmp_path, own_model, sharp_st_model):
    table = make_table(tmp_path / "db", own_model)
    before = table.search("anonymous function").limit(2).to_list()
    lancedb_baai.swap(str(own_model), str(sharp_st_model), dtype="float32")
    with pytest.raises(EmbeddingDriftError, match="differs in weights"):
        reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()
    with pytest.raises(ADD_ERRORS, match="embedding drift"):
        reopen(tmp_path / "db").add([{"text": "one more row"}])
    lancedb_baai.rollback(str(own_model), dtype="float32")
    after = reopen(tmp_path / "db").search("anonymous function").limit(2).to_list()
    assert [(r["text"], r["_distance"]) for r in after] == [(r["text"], r["_distance"]) for r in before]
    assert table.count_rows() == len(ROWS)


def test_the_check_runs_once_per_engine_not_per_query(tmp_path, own_model, monkeypatch):
    table = make_table(tmp_path / "db", own_model)
    calls = []
    original = lancedb_baai.BAAIEmbeddings.fingerprint_of
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "fingerprint_of",
                        lambda self, engine: calls.append(1) or original(self, engine))
    lancedb_baai.release()  # the add above checked the engine it used; the search loads and checks a new one
    reopened = reopen(tmp_path / "db")
    for _ in range(5):
        reopened.search("anonymous function").limit(1).to_list()
    assert len(calls) == 1


def test_a_dtype_difference_alone_is_allowed_and_logged(tmp_path, own_model, caplog):
    table = make_table(tmp_path / "db", own_model)
    functions = stored_functions(table)
    functions[0]["model"][METADATA_KEY]["fingerprint"]["dtype"] = "bfloat16"
    rewrite_functions(table, functions)
    with caplog.at_level(logging.INFO, logger="lancedb_baai"):
        assert len(reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()) == 1
    assert "float32 instead of bfloat16 (allowed)" in caplog.text


@pytest.mark.parametrize("old", ["no fingerprint", "no provenance"])
def test_a_table_written_before_fingerprints_keeps_working(tmp_path, own_model, caplog, old):
    table = make_table(tmp_path / "db", own_model)
    functions = stored_functions(table)
    if old == "no fingerprint":
        del functions[0]["model"][METADATA_KEY]["fingerprint"]
    else:
        del functions[0]["model"][METADATA_KEY]
    rewrite_functions(table, functions)
    reopened = reopen(tmp_path / "db")
    with caplog.at_level(logging.INFO, logger="lancedb_baai"):
        for _ in range(2):
            assert len(reopened.search("anonymous function").limit(1).to_list()) == 1
        reopened.add([{"text": "one more row"}])
    assert reopened.count_rows() == len(ROWS) + 1
    assert caplog.text.count("recorded no model fingerprint") == (1 if old == "no fingerprint" else 0)
    assert lancedb_baai.describe(reopened)[0]["status"] == "unrecorded"


def test_a_stored_width_other_than_the_model_s_is_drift(tmp_path, own_model):
    table = make_table(tmp_path / "db", own_model)
    functions = stored_functions(table)
    functions[0]["model"][METADATA_KEY]["fingerprint"]["dims"] = 384
    rewrite_functions(table, functions)
    with pytest.raises(EmbeddingDriftError, match="dims 384 -> 32"):
        reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()


def test_bad_policy_in_the_environment_is_refused(tmp_path, own_model, monkeypatch):
    make_table(tmp_path / "db", own_model)
    lancedb_baai.release()
    monkeypatch.setenv("LANCEDB_BAAI_ON_DRIFT", "ignore")
    with pytest.raises(ValueError, match="'error' or 'warn'"):
        testing.build_st_embedder(own_model, seed=9)
        reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()


def test_on_drift_warn_is_stored_with_the_table(tmp_path, own_model, caplog):
    make_table(tmp_path / "db", own_model, on_drift="warn")
    lancedb_baai.release()
    testing.build_st_embedder(own_model, seed=9)
    with caplog.at_level(logging.WARNING, logger="lancedb_baai"):
        assert len(reopen(tmp_path / "db").search("anonymous function").limit(1).to_list()) == 1
    assert "embedding drift" in caplog.text and "going on" in caplog.text


@pytest.fixture(scope="module")
def m3_model(tmp_path_factory):
    return testing.build_m3_model(tmp_path_factory.mktemp("m3") / "BAAI" / "bge-m3")


def test_m3_dense_and_colbert_columns_record_their_own_fingerprints(tmp_path, m3_model):
    from lancedb.embeddings import EmbeddingFunctionConfig
    from lancedb.pydantic import MultiVector

    registry = get_registry()
    dense = registry.get("local-baai").create(name=str(m3_model), dtype="float32")
    colbert = registry.get("local-baai-m3-colbert").create(name=str(m3_model), dtype="float32")

    class Doc(LanceModel):
        text: str
        dense: Vector(dense.ndims())
        colbert: MultiVector(colbert.ndims())

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc, embedding_functions=[
        EmbeddingFunctionConfig(source_column="text", vector_column="dense", function=dense),
        EmbeddingFunctionConfig(source_column="text", vector_column="colbert", function=colbert)])
    table.add(lancedb_baai.fill_multivectors(table, ROWS))
    rows = {row["vector_column"]: row for row in lancedb_baai.describe(reopen(tmp_path / "db"))}
    assert rows["dense"]["fingerprint"]["output"] == "dense" and rows["colbert"]["fingerprint"]["output"] == "colbert"
    assert rows["dense"]["fingerprint"]["weights"] == rows["colbert"]["fingerprint"]["weights"]
    assert rows["dense"]["status"] == rows["colbert"]["status"] == "ok"
    hits = reopen(tmp_path / "db").search("anonymous function", vector_column_name="colbert").limit(1).to_list()
    assert len(hits) == 1


def test_cli_info_table_shows_the_columns_model(tmp_path, own_model):
    from typer.testing import CliRunner

    from lancedb_baai import cli

    make_table(tmp_path / "db", own_model)
    result = CliRunner().invoke(cli.app, ["info", "--table", str(tmp_path / "db"), "docs"])
    assert result.exit_code == 0, result.output
    assert "vector" in result.output and "ok" in result.output and "32" in result.output
    as_json = CliRunner().invoke(cli.app, ["info", "--json", "--table", str(tmp_path / "db"), "docs"])
    [row] = json.loads(as_json.output)
    assert row["status"] == "ok" and row["fingerprint"]["output"] == "dense"
    missing = CliRunner().invoke(cli.app, ["info", "--table", str(tmp_path / "db"), "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output
