"""reembed(): a new column from a new model, resumable after kill -9, one switch commit; attach."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import TextEmbeddingFunction, get_registry, register
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import testing

TEXTS = [f"paragraph {i}: {w} functions return values" for i, w in enumerate(
    ["lambda", "generator", "list", "dict", "class", "module", "async", "yield", "import", "tuple"] * 6)]


def make_table(db_path, model_path):
    fn = get_registry().get("local-baai").create(name=str(model_path), dtype="float32")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(db_path).create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    return table


def vectors(table, column):
    rows = table.to_arrow().sort_by("text")
    return rows["text"].to_pylist(), np.array(rows[column].to_pylist(), dtype=np.float32)


@pytest.fixture
def table(tmp_path, st_model):
    return make_table(tmp_path / "db", shutil.copytree(st_model, tmp_path / "models" / "bge-small-en-v1.5"))


@pytest.fixture
def new_fn(sharp_st_model):
    return lancedb_baai.BAAIEmbeddings(name=str(sharp_st_model), dtype="float32")


def test_reembed_fills_a_new_column_and_switches_in_one_commit(table, new_fn, tmp_path):
    texts, old = vectors(table, "vector")
    result = lancedb_baai.reembed(table, new_fn, batch_size=16, checkpoint=tmp_path / "ck.sqlite")
    assert result["status"] == "switched" and result["old_column"] == "vector" and result["rows"] == len(TEXTS)
    column = result["column"]
    # one commit for the filled column, one for the metadata switch
    assert result["version_after"] == result["version_before"] + 2
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    assert np.array_equal(vectors(reopened, "vector")[1], old)  # the old column stays bit for bit
    new_texts, new = vectors(reopened, column)
    assert np.allclose(new, np.array(new_fn.generate_embeddings(new_texts)), atol=1e-5)
    assert list(reopened.embedding_functions) == [column]
    assert lancedb_baai.describe(reopened)[0]["status"] == "ok"
    assert len(reopened.search("lambda", vector_column_name=column).limit(3).to_list()) == 3
    reopened.restore(result["version_before"])  # rollback: LanceDB time travel
    assert list(lancedb.connect(tmp_path / "db").open_table("docs").embedding_functions) == ["vector"]


def test_reembed_with_the_same_model_is_a_no_op(table, tmp_path):
    same = lancedb_baai.BAAIEmbeddings(name=table.embedding_functions["vector"].function.name, dtype="float32")
    version = table.version
    result = lancedb_baai.reembed(table, same)
    assert result["status"] == "unchanged" and table.version == version


KILLER = """
import os, signal, sys
import lancedb, lancedb_baai
calls = []
original = lancedb_baai.BAAIEmbeddings.generate_embeddings
def dying(self, texts, *a, **k):
    calls.append(len(texts))
    if len(calls) > int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, texts, *a, **k)
lancedb_baai.BAAIEmbeddings.generate_embeddings = dying
table = lancedb.connect(sys.argv[1]).open_table("docs")
lancedb_baai.reembed(table, lancedb_baai.BAAIEmbeddings(name=sys.argv[2], dtype="float32"), batch_size=6,
                     checkpoint=sys.argv[3])
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_reembed_resumes_without_losing_or_repeating_rows(table, new_fn, tmp_path, monkeypatch):
    checkpoint = tmp_path / "ck.sqlite"
    version, (texts, old) = table.version, vectors(table, "vector")
    for survive in (3, 6):  # killed twice, after 3 and then 6 more batches of 6 rows
        proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "db"), new_fn.name, str(checkpoint),
                               str(survive)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        reopened = lancedb.connect(tmp_path / "db").open_table("docs")
        assert reopened.version == version and reopened.schema.names == ["text", "vector"]
        assert np.array_equal(vectors(reopened, "vector")[1], old)
    embedded = []
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings",
                        lambda self, t, *a, **k: embedded.append(len(t)) or original(self, t, *a, **k))
    result = lancedb_baai.reembed(lancedb.connect(tmp_path / "db").open_table("docs"), new_fn, batch_size=6,
                                  checkpoint=checkpoint)
    assert 0 < sum(embedded) <= len(TEXTS) - 6 * 6  # the batches kept by the checkpoint are not embedded again
    final = lancedb.connect(tmp_path / "db").open_table("docs")
    new_texts, new = vectors(final, result["column"])
    assert new_texts == texts and final.count_rows() == len(TEXTS)
    monkeypatch.undo()
    assert np.allclose(new, np.array(new_fn.generate_embeddings(new_texts)), atol=1e-5)


def test_attach_a_function_to_a_plain_text_table(tmp_path, sharp_st_model):
    db = lancedb.connect(tmp_path / "db")
    plain = db.create_table("docs", pa.table({"text": TEXTS}))
    fn = lancedb_baai.BAAIEmbeddings(name=str(sharp_st_model), dtype="float32")
    result = lancedb_baai.reembed(plain, fn, source="text", checkpoint=tmp_path / "ck.sqlite")
    assert result["status"] == "attached" and result["column"] == "vector"
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    assert lancedb_baai.describe(reopened)[0]["status"] == "ok"
    reopened.add([{"text": "a brand new row"}])  # embedded by the attached function
    added = reopened.search().where("text = 'a brand new row'").to_list()[0]["vector"]
    assert np.allclose(added, fn.generate_embeddings(["a brand new row"])[0], atol=1e-5)
    assert len(reopened.search("a brand new row").limit(3).to_list()) == 3


@register("test-another-package")
class _OtherPackage(TextEmbeddingFunction):
    def ndims(self) -> int:
        return 4

    def generate_embeddings(self, texts, *args, **kwargs):
        return [np.ones(4, dtype=np.float32) for _ in texts]


def test_errors_come_before_any_write(table, new_fn, tmp_path):
    version = table.version
    with pytest.raises(ValueError, match="source column 'body' not found"):
        lancedb_baai.reembed(table, new_fn, source="body", column="v2")
    with pytest.raises(ValueError, match="has no embedding function"):
        lancedb_baai.reembed(table, new_fn, column="text")
    with pytest.raises(ValueError, match="ColBERT multi-vector columns are not supported"):
        lancedb_baai.reembed(table, lancedb_baai.BGEM3ColbertEmbeddings(name="BAAI/bge-m3"))
    narrow = testing.build_st_embedder(tmp_path / "narrow" / "bge-small-en-v1.5", hidden=16)
    with pytest.raises(ValueError, match="16-d vectors but column 'vector' holds 32-d"):
        lancedb_baai.reembed(table, lancedb_baai.BAAIEmbeddings(name=str(narrow), dtype="float32"))
    other_fn = get_registry().get("test-another-package").create()

    class Other(LanceModel):
        text: str = other_fn.SourceField()
        vector: Vector(4) = other_fn.VectorField()

    other = lancedb.connect(tmp_path / "db").create_table("other", schema=Other)
    other.add([{"text": "x"}])
    with pytest.raises(ValueError, match="another package"):
        lancedb_baai.reembed(other, new_fn)
    assert table.version == version and other.version == 2


def _keyed_table(tmp_path, model):
    """A table of TEXTS with an ``id`` key, filled by ``local-baai`` on ``model``: what fill_missing needs."""
    fn = get_registry().get("local-baai").create(name=str(model), dtype="float32")

    class Doc(LanceModel):
        id: int
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    return fn, table


def test_fill_missing_embeds_only_the_null_rows_in_one_commit(tmp_path, sharp_st_model):
    fn, table = _keyed_table(tmp_path, sharp_st_model)
    table.update(where="id % 7 = 0", values_sql={"vector": "NULL"})  # 15% of the rows lose their vector
    before = {r["id"]: r["vector"] for r in table.to_arrow().to_pylist()}
    nulls = sorted(i for i, v in before.items() if v is None)
    assert len(nulls) == 9
    result = lancedb_baai.fill_missing(table, key="id", batch_size=4, checkpoint=tmp_path / "ck")
    assert result["status"] == "filled" and result["rows"] == len(nulls)
    assert result["version_after"] == result["version_before"] + 1
    after = {r["id"]: r for r in lancedb.connect(tmp_path / "db").open_table("docs").to_arrow().to_pylist()}
    assert all(after[i]["vector"] == v for i, v in before.items() if v is not None)  # bit for bit
    fresh = fn.generate_embeddings([after[i]["text"] for i in nulls])
    assert np.allclose([after[i]["vector"] for i in nulls], fresh, atol=1e-5)
    assert lancedb_baai.fill_missing(table, key="id")["status"] == "complete"


def test_fill_missing_resumes_from_its_checkpoint(tmp_path, sharp_st_model, monkeypatch):
    fn, table = _keyed_table(tmp_path, sharp_st_model)
    table.update(where="id % 3 = 0", values_sql={"vector": "NULL"})  # 20 rows, 5 batches of 4
    version, calls, crash = table.version, [], [True]
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings

    def crash_on_third(self, texts, *a, **k):
        calls.append(len(texts))
        if crash[0] and len(calls) == 3:
            raise _Killed
        return original(self, texts, *a, **k)

    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings", crash_on_third)
    with pytest.raises(_Killed):
        lancedb_baai.fill_missing(table, key="id", batch_size=4, checkpoint=tmp_path / "ck")
    assert lancedb.connect(tmp_path / "db").open_table("docs").version == version  # nothing committed
    calls.clear()
    crash[0] = False
    result = lancedb_baai.fill_missing(table, key="id", batch_size=4, checkpoint=tmp_path / "ck")
    assert result["rows"] == 20 and sum(calls) == 20 - 2 * 4  # the two finished batches were kept


class _Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_attach_then_search_by_text_in_a_fresh_process(tmp_path, sharp_st_model):
    from typer.testing import CliRunner

    from lancedb_baai import cli

    lancedb.connect(tmp_path / "db").create_table("docs", pa.table({"text": TEXTS}))
    result = CliRunner().invoke(cli.app, ["reembed", str(tmp_path / "db"), "docs", "--model", str(sharp_st_model),
                                          "--source", "text", "--dtype", "float32", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert '"status": "attached"' in result.output
    search = ("import sys, lancedb, lancedb_baai; t = lancedb.connect(sys.argv[1]).open_table('docs'); "
              "print(len(t.search('lambda functions').limit(5).to_list()))")
    proc = subprocess.run([sys.executable, "-c", search, str(tmp_path / "db")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "5", proc.stderr[-2000:]
    refused = CliRunner().invoke(cli.app, ["reembed", str(tmp_path / "db"), "docs", "--missing-only"])
    assert refused.exit_code == 1 and "--key" in refused.output


def test_readers_see_the_old_column_until_the_switch(table, new_fn, tmp_path, monkeypatch):
    def snapshot():
        reader = lancedb.connect(tmp_path / "db").open_table("docs")
        return reader.schema.names, [(r["text"], r["_distance"]) for r in reader.search("lambda").limit(5).to_list()]

    before, seen = snapshot(), []
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings",
                        lambda self, t, *a, **k: seen.append(snapshot()) or original(self, t, *a, **k))
    lancedb_baai.reembed(table, new_fn, batch_size=20, checkpoint=tmp_path / "ck.sqlite")
    assert len(seen) == 3 and all(s == before for s in seen)  # mid-run: same columns, same answers
