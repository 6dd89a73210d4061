"""reembed(): a new column from a new model, resumable after kill -9, one switch commit; attach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import TextEmbeddingFunction, get_registry, register
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai.tables import switch as _switch
from lancedb_baai import testing
from lancedb_baai.tables.reembed import drop_kept

from _tables import keyed_table, text_table

TEXTS = [f"paragraph {i}: {w} functions return values" for i, w in enumerate(
    ["lambda", "generator", "list", "dict", "class", "module", "async", "yield", "import", "tuple"] * 6)]


def make_table(db_path, model_path):
    fn = get_registry().get("local-baai").create(name=str(model_path), dtype="float32")
    return text_table(db_path, fn, [{"text": t} for t in TEXTS])


def vectors(table, column):
    rows = table.to_arrow().sort_by("text")
    return rows["text"].to_pylist(), np.array(rows[column].to_pylist(), dtype=np.float32)


@pytest.fixture
def table(tmp_path, st_model):
    return make_table(tmp_path / "db", shutil.copytree(st_model, tmp_path / "models" / "bge-small-en-v1.5"))


@pytest.fixture
def new_fn(sharp_st_model):
    return lancedb_baai.BAAIEmbeddings(name=str(sharp_st_model), dtype="float32")


def test_reembed_switches_the_column_in_one_commit_and_keeps_the_old_vectors(table, new_fn, tmp_path):
    texts, old = vectors(table, "vector")
    result = lancedb_baai.reembed(table, new_fn, batch_size=16, checkpoint=tmp_path / "ck")
    assert result["status"] == "switched" and result["column"] == "vector" and result["rows"] == len(TEXTS)
    assert result["version_after"] == result["version_before"] + 1  # fill, switch and metadata: one commit
    kept = result["kept_column"]
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    assert reopened.schema.field(kept).type == pa.list_(pa.float32())  # not a vector column for LanceDB
    assert np.array_equal(vectors(reopened, kept)[1], old)  # the old vectors, bit for bit
    new_texts, new = vectors(reopened, "vector")
    assert new_texts == texts and np.allclose(new, np.array(new_fn.generate_embeddings(new_texts)), atol=1e-5)
    assert list(reopened.embedding_functions) == ["vector"]
    assert lancedb_baai.describe(reopened)[0]["status"] == "ok"
    hits = reopened.search("lambda").limit(3).to_list()  # plain search: no vector_column_name
    assert len(hits) == 3 and hits == reopened.search("lambda", vector_column_name="vector").limit(3).to_list()
    reopened.add([{"text": "a row added after the switch"}])  # embedded by the new model; nothing kept for it
    reopened.restore(result["version_before"])  # rollback by time travel
    assert lancedb.connect(tmp_path / "db").open_table("docs").schema.names == ["text", "vector"]
    assert not list((tmp_path / "ck").glob("*"))  # the checkpoint is gone after the commit


def test_rollback_brings_the_kept_vectors_back_and_embeds_only_rows_added_since(table, new_fn, tmp_path,
                                                                               monkeypatch):
    _, old = vectors(table, "vector")
    old_fn = table.embedding_functions["vector"].function
    first = lancedb_baai.reembed(table, new_fn, batch_size=16, checkpoint=tmp_path / "ck")
    table.add([{"text": "zz a row added after the switch"}])
    embedded = counting(monkeypatch)
    back = lancedb_baai.rollback_reembed(table, checkpoint=tmp_path / "ck2")
    assert back["status"] == "rolled back" and sum(embedded) == back["embedded"] == 1
    assert back["version_after"] == back["version_before"] + 1 and back["dropped"] == [first["kept_column"]]
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    texts, restored = vectors(reopened, "vector")
    assert np.array_equal(restored[:-1], old)  # bit for bit, not re-embedded
    assert np.allclose(restored[-1], old_fn.generate_embeddings([texts[-1]])[0], atol=1e-5)
    assert reopened.embedding_functions["vector"].function.name == old_fn.name
    assert lancedb_baai.describe(reopened)[0]["status"] == "ok" and len(reopened.search("lambda").to_list()) > 0
    again = lancedb_baai.reembed(reopened, new_fn, checkpoint=tmp_path / "ck3")  # forward again: all kept
    assert again["embedded"] == 0 and again["dropped"] == [back["kept_column"]]  # every row was kept


def test_drop_old_keeps_no_vectors_now_or_later(table, new_fn, tmp_path):
    result = lancedb_baai.reembed(table, new_fn, checkpoint=tmp_path / "ck")
    with_kept = lancedb.connect(tmp_path / "db").open_table("docs")
    assert drop_kept(with_kept) == [result["kept_column"]] and with_kept.schema.names == ["text", "vector"]
    with pytest.raises(ValueError, match="keeps no earlier model's vectors"):
        lancedb_baai.rollback_reembed(with_kept)
    back = lancedb_baai.reembed(with_kept, table.embedding_functions["vector"].function, drop_old=True,
                                checkpoint=tmp_path / "ck2")
    assert back["kept_column"] is None and lancedb.connect(tmp_path / "db").open_table("docs").schema.names == \
        ["text", "vector"]


def test_a_writer_committing_meanwhile_makes_the_switch_run_again_on_the_new_version(table, new_fn, tmp_path,
                                                                                     monkeypatch):
    write, raced = _switch._write_fragment, []

    def racing(*args):
        if not raced:  # once: another process appends a row while the fragments are written
            raced.append(lancedb.connect(tmp_path / "db").open_table("docs").add([{"text": "written meanwhile"}]))
        return write(*args)

    monkeypatch.setattr(_switch, "_write_fragment", racing)
    embedded = counting(monkeypatch)
    result = lancedb_baai.reembed(table, new_fn, batch_size=16, checkpoint=tmp_path / "ck")
    assert embedded[-2:] == [1, 1]  # the writer's add (old model), then the second run: only the new row
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    texts, new = vectors(reopened, "vector")
    assert reopened.count_rows() == len(TEXTS) + 1 and result["version_after"] == result["version_before"] + 1
    assert np.allclose(new, np.array(new_fn.generate_embeddings(texts)), atol=1e-5)


def test_a_table_at_an_old_version_is_refused_before_any_write(table, new_fn, tmp_path):
    table.add([{"text": "one more row"}])
    latest = table.version
    old = lancedb.connect(tmp_path / "db").open_table("docs")
    old.checkout(latest - 1)
    with pytest.raises(ValueError, match="checkout_latest"):
        lancedb_baai.reembed(old, new_fn, checkpoint=tmp_path / "ck")
    with pytest.raises(ValueError, match="checkout_latest"):
        lancedb_baai.rollback_reembed(old)
    assert lancedb.connect(tmp_path / "db").open_table("docs").version == latest and not (tmp_path / "ck").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories, so the check cannot fire")
def test_a_read_only_table_directory_is_refused_before_any_write(table, new_fn, tmp_path):
    directory, version = Path(table.to_lance().uri), table.version
    directory.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="read-only for this process"):
            lancedb_baai.reembed(table, new_fn, checkpoint=tmp_path / "ck")
    finally:
        directory.chmod(0o755)
    assert lancedb.connect(tmp_path / "db").open_table("docs").version == version


def counting(monkeypatch):
    """The sizes of the embedding calls made from now on (the calls still run)."""
    calls = []
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings",
                        lambda self, t, *a, **k: calls.append(len(t)) or original(self, t, *a, **k))
    return calls


def test_reembed_with_the_same_model_is_a_no_op(table, tmp_path):
    same = lancedb_baai.BAAIEmbeddings(name=table.embedding_functions["vector"].function.name, dtype="float32")
    version = table.version
    result = lancedb_baai.reembed(table, same)
    assert result["status"] == "unchanged" and table.version == version


def test_attach_a_function_to_a_plain_text_table(tmp_path, sharp_st_model):
    db = lancedb.connect(tmp_path / "db")
    plain = db.create_table("docs", pa.table({"text": TEXTS}))
    fn = lancedb_baai.BAAIEmbeddings(name=str(sharp_st_model), dtype="float32")
    result = lancedb_baai.reembed(plain, fn, source="text", checkpoint=tmp_path / "ck")
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
    table = keyed_table(tmp_path / "db", model, TEXTS)
    return table.embedding_functions["vector"].function, table


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


def test_fill_missing_without_a_key_fills_the_rows_in_place(tmp_path, sharp_st_model):
    """Lance's row ids write the vectors back: rows keep their order, deleted rows stay deleted."""
    table = keyed_table(tmp_path / "db", sharp_st_model, TEXTS, parts=3)  # three fragments
    fn = table.embedding_functions["vector"].function
    table.update(where="id % 7 = 0", values_sql={"vector": "NULL"})
    table.delete("id IN (7, 8)")  # a null row and a filled one: deletion vectors in a fragment
    before = table.to_arrow()
    metadata = table.schema.metadata
    nulls = [r["id"] for r in before.to_pylist() if r["vector"] is None]
    assert len(nulls) == 8
    result = lancedb_baai.fill_missing(table, batch_size=3, checkpoint=tmp_path / "ck")
    assert result["status"] == "filled" and result["rows"] == len(nulls)
    assert result["version_after"] == result["version_before"] + 1
    after = lancedb.connect(tmp_path / "db").open_table("docs")
    rows = after.to_arrow()
    assert rows["id"].to_pylist() == before["id"].to_pylist() and rows["text"] == before["text"]  # order kept
    assert after.schema.metadata == metadata and not (tmp_path / "ck").exists()
    kept = [(b, a) for b, a in zip(before["vector"].to_pylist(), rows["vector"].to_pylist()) if b is not None]
    assert len(kept) == len(TEXTS) - 2 - len(nulls) and all(b == a for b, a in kept)  # bit for bit
    filled = {r["id"]: r["vector"] for r in rows.to_pylist() if r["id"] in nulls}
    fresh = fn.generate_embeddings([TEXTS[i] for i in nulls])
    assert np.allclose([filled[i] for i in nulls], fresh, atol=1e-5)
    assert lancedb_baai.fill_missing(after)["status"] == "complete"


def test_fill_missing_without_a_key_runs_again_when_another_writer_commits(tmp_path, sharp_st_model, monkeypatch):
    table = keyed_table(tmp_path / "db", sharp_st_model, TEXTS)
    table.update(where="id % 5 = 0", values_sql={"vector": "NULL"})
    order = table.to_arrow()["id"].to_pylist()
    original, deleted = lancedb_baai.BAAIEmbeddings.generate_embeddings, []

    def delete_meanwhile(self, texts, *a, **k):
        if not deleted:  # another process deletes rows of the same fragment before the fill commits
            deleted.append(lancedb.connect(tmp_path / "db").open_table("docs").delete("id IN (1, 5)"))
        return original(self, texts, *a, **k)

    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings", delete_meanwhile)
    result = lancedb_baai.fill_missing(table)
    rows = lancedb.connect(tmp_path / "db").open_table("docs").to_arrow().to_pylist()
    assert [r["id"] for r in rows] == [i for i in order if i not in (1, 5)]  # the delete holds
    assert result["rows"] == 11 and all(r["vector"] is not None for r in rows)


@pytest.mark.parametrize("key", ["id", None])
def test_fill_missing_resumes_from_its_checkpoint(tmp_path, sharp_st_model, monkeypatch, key):
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
        lancedb_baai.fill_missing(table, key=key, batch_size=4, checkpoint=tmp_path / "ck")
    assert lancedb.connect(tmp_path / "db").open_table("docs").version == version  # nothing committed
    calls.clear()
    crash[0] = False
    result = lancedb_baai.fill_missing(table, key=key, batch_size=4, checkpoint=tmp_path / "ck")
    assert result["rows"] == 20 and sum(calls) == 20 - 2 * 4  # the two finished batches were kept


class _Killed(Exception):
    pass


def test_cli_switches_rolls_back_and_drops_the_kept_vectors(table, sharp_st_model, tmp_path):
    from typer.testing import CliRunner

    from lancedb_baai import cli

    def run(*args):
        done = CliRunner().invoke(cli.app, ["reembed", str(tmp_path / "db"), "docs", *args])
        return done.exit_code, done.output

    code, output = run("--model", str(sharp_st_model), "--dtype", "float32", "--batch-size", "16")
    assert code == 0 and json.loads(output.splitlines()[-1])["status"] == "switched", output
    code, output = run("--rollback")
    back = json.loads(output.splitlines()[-1])
    assert code == 0 and back["status"] == "rolled back" and back["embedded"] == 0, output
    code, output = run("--drop-old")
    assert code == 0 and json.loads(output.splitlines()[-1]) == {"status": "dropped", "dropped": [back["kept_column"]]}
    code, output = run()
    assert code == 1 and "--rollback" in output
    assert lancedb.connect(tmp_path / "db").open_table("docs").schema.names == ["text", "vector"]


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
    complete = CliRunner().invoke(cli.app, ["reembed", str(tmp_path / "db"), "docs", "--missing-only"])
    assert complete.exit_code == 0 and json.loads(complete.output.splitlines()[-1])["status"] == "complete"


@pytest.mark.parametrize("key", [[], ["--key", "id"]])
def test_cli_fills_missing_vectors_with_or_without_a_key(tmp_path, sharp_st_model, key):
    from typer.testing import CliRunner

    from lancedb_baai import cli

    table = keyed_table(tmp_path / "db", sharp_st_model, TEXTS)
    table.update(where="id < 4", values_sql={"vector": "NULL"})
    done = CliRunner().invoke(cli.app, ["reembed", str(tmp_path / "db"), "docs", "--missing-only", *key])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.splitlines()[-1])["rows"] == 4
    assert lancedb.connect(tmp_path / "db").open_table("docs").count_rows("vector IS NULL") == 0


def test_readers_see_the_old_table_until_the_one_commit_then_the_new_one(table, new_fn, tmp_path, monkeypatch):
    def snapshot():
        reader = lancedb.connect(tmp_path / "db").open_table("docs")  # plain search by text throughout
        return reader.schema.names, [(r["text"], r["_distance"]) for r in reader.search("lambda").limit(5).to_list()]

    before, seen = snapshot(), []
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings",
                        lambda self, t, *a, **k: seen.append(snapshot()) or original(self, t, *a, **k))
    write = _switch._write_fragment
    monkeypatch.setattr(_switch, "_write_fragment", lambda *a: seen.append(snapshot()) or write(*a))
    result = lancedb_baai.reembed(table, new_fn, batch_size=20, checkpoint=tmp_path / "ck")
    assert len(seen) == 3 + 1 and all(s == before for s in seen)  # embedding and writing: the old table
    monkeypatch.undo()
    names, hits = snapshot()
    assert names == ["text", "vector", result["kept_column"]]
    query = new_fn.compute_query_embeddings("lambda")[0]
    expected = lancedb.connect(tmp_path / "db").open_table("docs").search(query).limit(5).to_list()
    assert hits == [(r["text"], r["_distance"]) for r in expected]  # the new model's query on the new vectors
