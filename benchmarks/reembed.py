"""Run with: .venv/bin/python benchmarks/reembed.py [--quick] [--out PATH] [--rounds N] [--rows N]

What re-embedding a table costs against writing it: ``lancedb_baai.reembed`` (checkpointed
chunks, Lance's ``merge_columns`` per fragment and one ``Merge`` commit) of N Python-reference
paragraphs (2000; ``--quick``: 64), against a plain ``table.add`` of the same rows with the
same model (the packaged all-MiniLM-L6-v2 in float32, one engine for both). Two kinds of
re-embed: attaching the function to a plain text table, and switching a table's vector column
(which also writes the old vectors to the kept column; the new function differs in
``normalize`` only, so the embedding work is the same). The contenders run in interleaved
rounds on fresh tables; best and median rounds are reported with the ratio add / reembed
(>= 0.9 means re-embedding runs at 90 % or more of the speed of a plain add).

Also measured: the resume overhead, a run that crashes half-way (an exception in the
embedding step stops it as a kill would: nothing committed, finished chunks kept in the
checkpoint) plus the same call again, against one uninterrupted run with the same chunks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common
import lancedb
import pyarrow as pa

import lancedb_baai
from lancedb_baai import testing


def _add_options(parser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default 3; quick 1)")
    parser.add_argument("--rows", type=int, default=None, help="paragraphs (default 2000; quick 64)")


def main() -> None:
    args = _common.parse_args("reembed", __doc__, _add_options)
    rows = args.rows or (64 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    texts = [p["text"] for p in testing.python_reference_paragraphs(rows)]
    rows = len(texts)
    model = _common.minilm_path()
    function = lancedb_baai.BAAIEmbeddings(name=model, dtype="float32", batch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(Path(tmp) / "db")
        counter = iter(range(10**6))

        def plain_add() -> Any:
            from lancedb.pydantic import LanceModel, Vector

            class Doc(LanceModel):
                text: str = function.SourceField()
                vector: Vector(function.ndims()) = function.VectorField()

            table = db.create_table(f"add{next(counter)}", schema=Doc)
            table.add([{"text": t} for t in texts])
            return table

        def reembed() -> None:
            table = db.create_table(f"plain{next(counter)}", pa.table({"text": texts}))
            lancedb_baai.reembed(table, function, source="text", checkpoint=Path(tmp) / f"ck{next(counter)}")

        switching = lancedb_baai.BAAIEmbeddings(name=model, dtype="float32", batch_size=32, normalize=False)
        filled = [plain_add() for _ in range(rounds + 1)]  # made before the clock runs: one per call

        def switch() -> None:
            lancedb_baai.reembed(filled.pop(), switching, checkpoint=Path(tmp) / f"ck{next(counter)}")

        timings = _common.interleaved({"table.add": plain_add, "reembed (attach)": reembed,
                                       "reembed (switch)": switch}, rounds)
        interrupted, whole = _resume_seconds(db, function, texts, Path(tmp))
    add_best = timings.best("table.add")
    results = [
        {"method": name, "rows": rows, "best_s": timings.best(name), "median_s": timings.median(name),
         "rows_per_s": rows / timings.best(name), "vs_add": add_best / timings.best(name)}
        for name in ("table.add", "reembed (attach)", "reembed (switch)")
    ] + [
        {"method": "reembed, crashed half-way + resumed", "rows": rows, "best_s": interrupted,
         "median_s": interrupted, "rows_per_s": rows / interrupted, "vs_add": add_best / interrupted},
        {"method": "reembed, uninterrupted (same batches)", "rows": rows, "best_s": whole, "median_s": whole,
         "rows_per_s": rows / whole, "vs_add": add_best / whole},
    ]
    _common.print_table(f"re-embedding {rows} paragraphs (MiniLM float32, best of {rounds})", results, [
        ("method", "method", ""), ("rows", "rows", "d"), ("best_s", "best s", ".2f"), ("median_s", "median s", ".2f"),
        ("rows_per_s", "rows/s", ".0f"), ("vs_add", "x vs add", ".2f")])
    _common.write_json(args.out, {"quick": args.quick, "rows": rows, "rounds": rounds,
                                  "resume_overhead_s": interrupted - whole,
                                  "machine": _common.machine_info(reembed="float32"), "results": results})


class _Crash(Exception):
    pass


def _resume_seconds(db, function, texts, tmp: Path) -> tuple[float, float]:
    """(seconds of a run that crashes half-way plus its resumed run, seconds of one uninterrupted run).

    The crash is an exception raised in the embedding step after half the chunks, which
    stops the run as a kill does (nothing committed, finished chunks kept in the checkpoint);
    the resumed run is the same call again.
    """
    import time

    batch = min(100, max(16, len(texts) // 4))  # at least 4 chunks, so the crash comes half-way
    original = function.generate_embeddings
    calls = []

    class Crashing(type(function)):
        def generate_embeddings(self, batch_texts, *a, **k):
            calls.append(1)
            if len(calls) == max(1, len(texts) // batch // 2) + 1:
                raise _Crash
            return original(batch_texts, *a, **k)

    crashing = Crashing(**function.model_dump())
    table = db.create_table("resume", pa.table({"text": texts}))
    start = time.perf_counter()
    try:
        lancedb_baai.reembed(table, crashing, source="text", batch_size=batch, checkpoint=tmp / "resume")
    except _Crash:
        pass
    lancedb_baai.reembed(table, function, source="text", batch_size=batch, checkpoint=tmp / "resume")
    interrupted = time.perf_counter() - start
    whole = db.create_table("whole", pa.table({"text": texts}))
    start = time.perf_counter()
    lancedb_baai.reembed(whole, function, source="text", batch_size=batch, checkpoint=tmp / "whole")
    return interrupted, time.perf_counter() - start


if __name__ == "__main__":
    main()
