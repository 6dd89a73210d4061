"""Run with: .venv/bin/python benchmarks/coldstart.py [--quick] [--out PATH] [--plot PATH.png]

Fresh process to first vector, for each way of running the packaged all-MiniLM-L6-v2.

Each measurement is a new interpreter (``subprocess``) that imports ``lancedb`` and
``lancedb_baai``, creates the embedding function (LanceDB's built-in
``sentence-transformers`` or ``local-baai`` with a backend) and embeds one text. The child
measures the time from its own process start (the kernel's start time of the process) to
the vector (and the part of it spent importing ``lancedb`` itself, which no embedding
function can shorten), and says which of torch, transformers, onnxruntime and openvino ended up in its
``sys.modules``: an ONNX Runtime or OpenVINO contender must serve without importing torch.

The exports are made first, by an untimed child per contender (a new export of a MiniLM
costs ~10-50 s per backend and precision), so the timed children measure opening an export
that exists, as every process after the first on a machine does. The disk cache is warm.
Repeats of the contenders are interleaved; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import _common

TEXT = "How do I open a file for reading in Python?"

# The child: nothing but the user's imports before the clock stops. Its argv[1] is JSON
# {"model": ..., "options": {...} or null}; it prints one JSON line.
CHILD = r"""
import json, os, sys, time
def since_start():
    # the kernel's start time of this process (clock ticks after boot) against the boot clock now
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
spec = json.loads(sys.argv[1])
t0 = since_start()
import lancedb
t_lancedb = since_start()
import lancedb_baai
from lancedb.embeddings import get_registry
t_import = since_start()
if spec["options"] is None:
    fn = get_registry().get("sentence-transformers").create(name=spec["model"], device="cpu")
else:
    fn = get_registry().get("local-baai").create(name=spec["model"], device="cpu", **spec["options"])
t_create = since_start()
vector = fn.generate_embeddings([spec["text"]])[0]
t_first = since_start()
wall_first = time.time()
out = {"interpreter_s": t0, "import_lancedb_s": t_lancedb, "import_s": t_import, "create_s": t_create, "first_vector_s": t_first,
       "first_vector_wall": wall_first, "dims": len(vector),
       "modules": {m: m in sys.modules for m in ("torch", "transformers", "sentence_transformers",
                                                 "onnxruntime", "openvino")}}
if spec["options"] is not None:
    choice = fn.backend_choice()
    out["backend"], out["dtype"], out["reason"] = choice.backend, choice.dtype, choice.reason
    out["loads"] = lancedb_baai.load_count()
print("COLDSTART " + json.dumps(out), flush=True)
"""


def _options(parser: argparse.ArgumentParser) -> None:
    _common.contender_option(parser)
    parser.add_argument("--repeats", type=int, default=None, help="timed fresh processes per contender "
                                                                   "(default 3; quick 1)")


def main() -> int:
    args = _common.parse_args("coldstart", __doc__, _options)
    environment = _common.backend_environment()
    contenders, skipped = _common.pick_contenders(args.contenders, args.quick)
    model_dir = _common.minilm_path()
    repeats = args.repeats or (1 if args.quick else 3)
    first = prepare(contenders, model_dir)
    with _common.busy(args.busy):
        rows = measure(contenders, model_dir, repeats)
    for row in rows:
        row["first_ever_s"] = first[row["key"]]["first_vector_s"]
    print()
    _common.print_table(f"Fresh process -> first vector, median of {repeats} (load average "
                        f"{os.getloadavg()[0]:.2f})", rows + skipped, COLUMNS)
    payload = {"benchmark": "coldstart", "quick": args.quick, "repeats": repeats, "busy": args.busy,
               "environment": environment, "machine": _common.machine_info(),
               "results": rows, "skipped": skipped,
               "targets": {"cold_start_s": 2.5, "cold_start_met": {
                   r["key"]: r["first_vector_s"] <= 2.5 for r in rows}}}
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, "Fresh process -> first vector, all-MiniLM-L6-v2 on CPU", [
        ("seconds", [r["method"] for r in rows], [r["first_vector_s"] for r in rows])])
    return 0


COLUMNS = [("method", "method", ""), ("first_vector_s", "first vector s", ".2f"),
           ("import_lancedb_s", "import lancedb s", ".2f"), ("after_lancedb_import_s", "after it s", ".2f"),
           ("torch_free", "torch-free", ""), ("resolved", "runs as", ""), ("skipped", "skipped", "")]


def run_child(contender: _common.Contender, model_dir: str, timeout: float = 900) -> dict[str, Any]:
    """One fresh process of ``contender``: its timings, modules and choice."""
    env = {key: value for key, value in os.environ.items() if key != "LANCEDB_BAAI_BACKEND"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("LANCEDB_LOG", "error")
    spec = json.dumps({"model": model_dir, "options": contender.options, "text": TEXT})
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, env=env,
                          timeout=timeout)
    ended = time.time()
    line = next((line for line in proc.stdout.splitlines() if line.startswith("COLDSTART ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cold-start child of {contender.key} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("COLDSTART "):])
    result["spawn_to_first_vector_s"] = result.pop("first_vector_wall") - start
    result["process_s"] = ended - start
    return result


def prepare(contenders: list[_common.Contender], model_dir: str) -> dict[str, dict[str, Any]]:
    """One untimed child per contender, so every export exists (and is gated) before the timed ones."""
    first = {}
    for contender in contenders:
        result = run_child(contender, model_dir)
        print(f"  first process: {contender.label}: {result['first_vector_s']:.2f}s", flush=True)
        first[contender.key] = result
    return first


def measure(contenders: list[_common.Contender], model_dir: str, repeats: int) -> list[dict[str, Any]]:
    """Median cold start of each contender over ``repeats`` fresh processes, contenders interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in contenders}
    for repeat in range(repeats):
        for contender in contenders:
            result = run_child(contender, model_dir)
            runs[contender.key].append(result)
            print(f"  cold start {repeat + 1}/{repeats}: {contender.label}: {result['first_vector_s']:.2f}s "
                  f"(torch imported: {result['modules']['torch']})", flush=True)
    rows = []
    for contender in contenders:
        results = runs[contender.key]
        last = results[-1]
        row = {"key": contender.key, "method": contender.label, "options": contender.options,
               "torch_free": "no" if any(r["modules"]["torch"] for r in results) else "yes",
               "torch_imported": any(r["modules"]["torch"] for r in results),
               "modules": last["modules"], "runs": results}
        for result in results:
            result["after_lancedb_import_s"] = result["first_vector_s"] - result["import_lancedb_s"]
        for figure in ("interpreter_s", "import_lancedb_s", "after_lancedb_import_s", "import_s", "create_s", "first_vector_s", "spawn_to_first_vector_s",
                       "process_s"):
            row[figure] = statistics.median(r[figure] for r in results)
        if "backend" in last:
            row["resolved"] = f"{last['backend']} {last['dtype']}"
            row["backend"], row["dtype"], row["reason"] = last["backend"], last["dtype"], last["reason"]
            row["loads"] = last["loads"]
        else:
            row["resolved"] = "sentence-transformers float32"
        rows.append(row)
    return rows


if __name__ == "__main__":
    _common.run_main(main)
