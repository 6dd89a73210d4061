"""Faults a long-running ingest meets: a writer killed with SIGKILL in the middle of ``table.add``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import lancedb

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
