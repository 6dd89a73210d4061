"""Run with: .venv/bin/python benchmarks/loads.py [--quick] [--out PATH] [--plot PATH.png]

How many times the model loads: `local-baai` against LanceDB's built-in `sentence-transformers`.

Both functions wrap the packaged all-MiniLM-L6-v2. Loads are counted the same way for
both, by wrapping ``SentenceTransformer.__init__`` (``local-baai`` builds its engine
with that class too; its own ``load_count()`` is reported beside as a cross-check):

* a ``spawn`` multiprocessing pool of W workers running T tasks, each task embedding a
  few texts with a pickled function object; loads are the sum over workers of the loads
  each worker made (each task reports its worker's count so far), ideally W; wall time
  is the best of two fresh pools per function (worker start-up and imports included);
* in this process, from nothing loaded: 100 ``table.add`` + ``table.search`` calls, 5
  table reopens, a pickled copy, and two configurations of the same model (normalize
  True/False) used alternately; ideally one load in each.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _common

OURS = "local-baai"
THEIRS = "sentence-transformers"


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="pool processes W (default 2)")
    parser.add_argument("--tasks", type=int, default=None, help="pool tasks T (default 8; quick 4)")
    parser.add_argument("--calls", type=int, default=None, help="add+search calls (default 100; quick 5)")


def main() -> int:
    args = _common.parse_args("loads", __doc__, _options)
    tasks = args.tasks or (4 if args.quick else 8)
    sizes = {"calls": args.calls or (5 if args.quick else 100), "reopens": 2 if args.quick else 5,
             "alternations": 4 if args.quick else 10}
    _common.STLoadCounter.install()
    model_dir = _common.minilm_path()
    texts = _common.corpus(200)
    rows = [pool_row(model_dir, texts[:8], args.workers, tasks, 1 if args.quick else 2)]
    rows += scenario_rows(model_dir, texts, sizes)
    _report(args, rows, args.workers, tasks, sizes)
    return 0


def make_function(which: str, model_dir: str, **options: Any) -> Any:
    """A function object as users create it from LanceDB's registry.

    ``local-baai`` runs on torch here, like the built-in: loads are counted as
    sentence-transformers constructions, which an ONNX Runtime / OpenVINO engine does not make.
    """
    from lancedb.embeddings import get_registry

    if which == OURS:
        options = {"backend": "torch", **options}
    return get_registry().get(which).create(name=model_dir, device="cpu", **options)


# ---------------------------------------------------------------- process pool


def _worker_init() -> None:
    _common.STLoadCounter.install()


def _embed_task(fn: Any, texts: list[str]) -> tuple[int, int, int]:
    """Embed as ``table.add`` does; report (pid, constructions so far, local-baai loads so far)."""
    import lancedb_baai

    with _common.quiet_loading():
        fn.compute_source_embeddings_with_retry(texts)
    return os.getpid(), _common.STLoadCounter.count, lancedb_baai.load_count()


def pool_run(fn: Any, texts: list[str], workers: int, tasks: int) -> dict[str, Any]:
    """Loads and wall time of ``tasks`` embedding tasks on a fresh spawn pool of ``workers``."""
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    pool = context.Pool(workers, initializer=_worker_init)
    try:
        results = pool.starmap(_embed_task, [(fn, texts)] * tasks, chunksize=1)
    finally:
        pool.close()
        pool.join()
    seconds = time.perf_counter() - start
    constructed: dict[int, int] = {}
    package: dict[int, int] = {}
    for pid, count, own in results:
        constructed[pid] = max(constructed.get(pid, 0), count)
        package[pid] = max(package.get(pid, 0), own)
    return {"loads": sum(constructed.values()), "package_load_count": sum(package.values()),
            "workers_used": len(constructed), "seconds": seconds}


def pool_row(model_dir: str, texts: list[str], workers: int, tasks: int, rounds: int) -> dict[str, Any]:
    """Both functions on fresh pools, alternating for ``rounds``; best time, and loads of every run."""
    row: dict[str, Any] = {"scenario": f"spawn pool, {workers} workers x {tasks} tasks", "ideal": workers}
    runs: dict[str, list[dict[str, Any]]] = {OURS: [], THEIRS: []}
    for round_ in range(rounds):
        for which in (OURS, THEIRS) if round_ % 2 == 0 else (THEIRS, OURS):
            print(f"pool, round {round_ + 1}/{rounds}: {which}", flush=True)
            runs[which].append(pool_run(make_function(which, model_dir), texts, workers, tasks))
    for which, results in runs.items():
        row[f"{which} loads"] = max(r["loads"] for r in results)
        row[f"{which} s"] = min(r["seconds"] for r in results)
        row[f"{which} detail"] = results
    return row


# ---------------------------------------------------------------- in-process scenarios


class Scenarios:
    """The situations of issue 3, each run from an empty cache with a fresh function object."""

    def __init__(self, model_dir: str, texts: list[str], sizes: dict[str, int]) -> None:
        import lancedb

        self.model_dir = model_dir
        self.texts = texts
        self.sizes = sizes
        self.questions = _common.questions(20)
        self.db = lancedb.connect(tempfile.mkdtemp(prefix="bench-loads-"))
        self.dims = make_function(OURS, model_dir).ndims()  # from config files: loads nothing

    def all(self) -> dict[str, tuple[int, Callable[[str], None]]]:
        """Scenario name -> (ideal loads, runner taking the function's registry name)."""
        s = self.sizes
        return {
            f"{s['calls']} table.add + search calls": (1, self.add_and_search),
            f"{s['reopens']} table reopens (add + search each)": (1, self.reopens),
            "a pickled copy (original, then copy)": (1, self.pickled_copy),
            f"two configs alternating, {s['alternations']} calls": (1, self.two_configs),
        }

    def _table(self, which: str, fn: Any) -> Any:
        import pyarrow as pa
        from lancedb.embeddings import EmbeddingFunctionConfig

        schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string()),
                            pa.field("vector", pa.list_(pa.float32(), self.dims))])
        config = EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=fn)
        return self.db.create_table(f"t_{which.replace('-', '_')}", schema=schema, mode="overwrite",
                                    embedding_functions=[config])

    def _add_and_search(self, table: Any, i: int) -> None:
        import pyarrow as pa

        table.add(pa.table({"id": [i], "text": [self.texts[i % len(self.texts)]]}))
        table.search(self.questions[i % len(self.questions)]).limit(3).to_list()

    def add_and_search(self, which: str) -> None:
        table = self._table(which, make_function(which, self.model_dir))
        for i in range(self.sizes["calls"]):
            self._add_and_search(table, i)

    def reopens(self, which: str) -> None:
        name = self._table(which, make_function(which, self.model_dir)).name
        for i in range(self.sizes["reopens"]):
            self._add_and_search(self.db.open_table(name), i)

    def pickled_copy(self, which: str) -> None:
        fn = make_function(which, self.model_dir)
        fn.compute_source_embeddings(self.texts[:4])
        pickle.loads(pickle.dumps(fn)).compute_source_embeddings(self.texts[4:8])

    def two_configs(self, which: str) -> None:
        configs = [make_function(which, self.model_dir, normalize=flag) for flag in (True, False)]
        for i in range(self.sizes["alternations"]):
            configs[i % 2].compute_source_embeddings(self.texts[i : i + 4])


def count_loads(run: Callable[[], None]) -> dict[str, Any]:
    """Loads (constructions) and seconds of ``run``, starting from an empty model cache."""
    import lancedb_baai

    lancedb_baai.release()
    gc.collect()  # the built-in function's models die with their function objects
    counter = _common.STLoadCounter
    constructed, package = counter.count, lancedb_baai.load_count()
    start = time.perf_counter()
    run()
    return {"loads": counter.count - constructed, "package_load_count": lancedb_baai.load_count() - package,
            "seconds": time.perf_counter() - start}


def scenario_rows(model_dir: str, texts: list[str], sizes: dict[str, int]) -> list[dict[str, Any]]:
    scenarios = Scenarios(model_dir, texts, sizes)
    for which in (OURS, THEIRS):  # first-use costs (imports, kernel set-up) are not part of a scenario
        make_function(which, model_dir).compute_source_embeddings(texts[:4])
    rows = []
    for name, (ideal, runner) in scenarios.all().items():
        row: dict[str, Any] = {"scenario": name, "ideal": ideal}
        for which in (OURS, THEIRS):
            print(f"{name}: {which}", flush=True)
            result = count_loads(lambda: runner(which))
            row[f"{which} loads"], row[f"{which} s"] = result["loads"], result["seconds"]
            row[f"{which} detail"] = result
        rows.append(row)
    return rows


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], workers: int, tasks: int,
            sizes: dict[str, int]) -> None:
    print()
    _common.print_table("Model loads and wall time, local-baai vs LanceDB built-in sentence-transformers", rows, [
        ("scenario", "scenario", ""), ("ideal", "ideal", "d"),
        (f"{OURS} loads", f"{OURS} loads", "d"), (f"{THEIRS} loads", "built-in loads", "d"),
        (f"{OURS} s", f"{OURS} s", ".2f"), (f"{THEIRS} s", "built-in s", ".2f")])
    for row in rows:
        row["speedup"] = row[f"{THEIRS} s"] / row[f"{OURS} s"]
    payload = {
        "benchmark": "loads", "quick": args.quick, "workers": workers, "tasks": tasks, "sizes": sizes,
        "machine": _common.machine_info(**{OURS: make_function(OURS, _common.minilm_path()).engine_key().dtype,
                                            THEIRS: "float32"}),
        "results": rows,
    }
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, "Model loads, all-MiniLM-L6-v2", [
        (f"loads: {label}", [r["scenario"] for r in rows], [r[f"{which} loads"] for r in rows])
        for which, label in ((OURS, "local-baai"), (THEIRS, "LanceDB built-in sentence-transformers"))
    ])


if __name__ == "__main__":
    _common.run_main(main)
