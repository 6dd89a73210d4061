"""Faults long-running writes meet: a writer killed with SIGKILL in ``table.add``, a re-embed killed three times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

import lancedb

from _tables import keyed_table

BATCH = 40

WRITER = textwrap.dedent(f"""
    import sys, lancedb, lancedb_baai
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector
    fn = get_registry().get("local-baai").create(name=sys.argv[2], dtype="float32")
    class Doc(LanceModel):
        batch: int
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()
    table = lancedb.connect(sys.argv[1]).create_table("docs", schema=Doc)
    for b in range(10_000):
        table.add([{{"batch": b, "text": f"passage {{i}} of batch {{b}} " * 8}} for i in range({BATCH})])
        print(b, flush=True)
""")


@pytest.mark.reliability
@pytest.mark.parametrize("after_batches", [2, 5])
def test_killed_writer_leaves_only_whole_batches(tmp_path, minilm, after_batches):
    db = tmp_path / "db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(minilm)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        committed = -1
        while committed < after_batches - 1 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "writer stopped before it was killed"
            committed = int(line)
        time.sleep(0.05 * after_batches)  # land inside a later table.add, at a different point each case
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    table = lancedb.connect(db).open_table("docs")
    rows = table.to_arrow()
    counts = rows.group_by("batch").aggregate([("batch", "count")]).to_pylist()
    assert rows.num_rows % BATCH == 0 and rows.num_rows >= after_batches * BATCH
    assert sorted(c["batch"] for c in counts) == list(range(len(counts)))  # no batch missing in between
    assert all(c["batch_count"] == BATCH for c in counts)
    assert rows["vector"].null_count == 0


KILLED_REEMBED = textwrap.dedent("""
    import os, signal, sys
    import lancedb, lancedb_baai
    from lancedb_baai.tables import checkpoint as _checkpoint
    db, model, checkpoint, at, stage = sys.argv[1:6]
    original, writes = _checkpoint.Checkpoint._write, []
    def dying(path, write):  # killed at the at-th checkpoint write: before it, torn half-way, or just after
        writes.append(path)
        if len(writes) < int(at):
            return original(path, write)
        if stage == "torn":
            write(path.with_name(path.name + ".tmp"))
        elif stage == "after":
            original(path, write)
        os.kill(os.getpid(), signal.SIGKILL)
    _checkpoint.Checkpoint._write = staticmethod(dying)
    table = lancedb.connect(db).open_table("docs")
    lancedb_baai.reembed(table, lancedb_baai.BAAIEmbeddings(name=model, dtype="float32"), batch_size=100,
                         checkpoint=checkpoint)
""")
REEMBED_ROWS, REEMBED_SEED = 2000, 21  # seed 21: kills while embedding and while writing fragments


def _docs_table(db, model):
    """REEMBED_ROWS rows in 4 fragments, embedded by ``model`` (texts without 8 or 9: see tests/test_ray.corpus)."""
    words = ["lambda", "list", "dict", "class", "module", "yield", "import", "tuple"]
    texts = [f"{words[i % 8]} {words[i // 8 % 8]} row {oct(i)[2:]}" for i in range(REEMBED_ROWS)]
    return keyed_table(db, model, texts, parts=4)


def _by_id(table, column):
    rows = table.to_arrow().sort_by("id")
    return rows["id"].to_pylist(), np.array(rows[column].to_pylist(), dtype=np.float32)


@pytest.mark.reliability
@pytest.mark.timeout(300)
def test_reembed_killed_three_times_at_random_points_then_resumed(tmp_path, st_model, sharp_st_model, monkeypatch):
    import random

    import lancedb_baai

    db, checkpoint = tmp_path / "db", tmp_path / "ck"
    table = _docs_table(db, st_model)
    version, (ids, old) = table.version, _by_id(table, "vector")
    writes = REEMBED_ROWS // 100 + 4  # checkpoint writes of one run: 20 chunks, then 4 written fragments
    rng = random.Random(REEMBED_SEED)
    kills = [(at, rng.choice(["before", "torn", "after"])) for at in sorted(rng.sample(range(1, writes + 1), 3))]
    print(f"seed {REEMBED_SEED}: SIGKILL at checkpoint writes (of {writes}) {kills}")
    for at, stage in kills:
        done = len([p for p in checkpoint.glob("*") if p.suffix in (".arrow", ".json")])
        proc = subprocess.run([sys.executable, "-c", KILLED_REEMBED, str(db), str(sharp_st_model), str(checkpoint),
                               str(at - done), stage], capture_output=True, text=True, timeout=240)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        reopened = lancedb.connect(db).open_table("docs")  # the old column intact until the switch
        assert reopened.version == version and reopened.schema.names == ["id", "text", "vector"]
        assert np.array_equal(_by_id(reopened, "vector")[1], old)
    kept_rows = sum(pa.ipc.open_file(p).read_all().num_rows for p in checkpoint.glob("chunk-*.arrow"))
    embedded = []
    original = lancedb_baai.BAAIEmbeddings.generate_embeddings
    monkeypatch.setattr(lancedb_baai.BAAIEmbeddings, "generate_embeddings",
                        lambda self, t, *a, **k: embedded.append(len(t)) or original(self, t, *a, **k))
    new_fn = lancedb_baai.BAAIEmbeddings(name=str(sharp_st_model), dtype="float32")
    result = lancedb_baai.reembed(lancedb.connect(db).open_table("docs"), new_fn, batch_size=100,
                                  checkpoint=checkpoint)
    assert sum(embedded) == REEMBED_ROWS - kept_rows  # what the killed runs kept is not embedded again
    assert result["version_after"] == version + 1
    final = lancedb.connect(db).open_table("docs")
    new_ids, new = _by_id(final, "vector")
    assert new_ids == ids == list(range(REEMBED_ROWS))  # every row once
    monkeypatch.undo()
    texts = final.to_arrow().sort_by("id")["text"].to_pylist()
    assert np.abs(new - np.array(new_fn.generate_embeddings(texts), dtype=np.float32)).max() <= 1e-5
    assert np.array_equal(_by_id(final, result["kept_column"])[1], old)
