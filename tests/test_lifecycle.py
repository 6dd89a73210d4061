"""Lifecycle: preload before fork, concurrent first loads, release, hot swap and rollback."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lancedb_baai
from lancedb_baai import testing

import _lifecycle_workers as workers
import _workers


def _vectors(name, texts=("python function", "a list of values")):
    return np.stack(lancedb_baai.BAAIEmbeddings(name=str(name), dtype="float32").generate_embeddings(list(texts)))


@pytest.fixture(scope="session")
def wide_model(models_root):
    """An embedder with a different width (48) than the other tiny ones (32)."""
    return testing.build_st_embedder(models_root / "wide" / "bge-small-en-v1.5", hidden=48, seed=5)


@pytest.fixture(scope="session")
def second_cross_encoder(models_root):
    return testing.build_cross_encoder(models_root / "v2" / "bge-reranker-base", seed=7)


def test_preload_serves_later_function_objects(st_model):
    base = lancedb_baai.load_count()
    record = lancedb_baai.preload(str(st_model), dtype="float32")
    assert record["loaded"] and record["loads"] == 1 and record["kind"] == "embed"
    _vectors(st_model)
    _vectors(st_model)
    assert lancedb_baai.load_count() - base == 1


def test_preload_then_fork_children_load_nothing_and_do_not_hang(st_model):
    lancedb_baai.preload(str(st_model), dtype="float32")
    parent = _vectors(st_model, ["python"])[0]  # the parent has run inference before forking
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)  # every child is up before any takes a task, so several take some
    with ctx.Pool(4, initializer=_workers.wait_for_peers, initargs=(barrier,)) as pool:
        results = pool.map_async(workers.embed_and_count, [str(st_model)] * 8).get(timeout=120)
    assert len({pid for pid, _, _ in results}) > 1
    assert all(loads == 0 for _, loads, _ in results)
    for _, _, vector in results:
        np.testing.assert_allclose(vector, parent, atol=1e-6)


def test_a_fork_after_preload_keeps_the_inherited_objects_out_of_the_childrens_collections(st_model):
    """Preload + fork freezes the collector for the fork: the children's collections leave the inherited heap
    (and its pages) alone through a collection and 100 calls; the parent is unfrozen; no engine, no freeze."""
    import gc

    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        unloaded, _ = pool.apply_async(workers.frozen_after_collecting, (str(st_model),)).get(timeout=120)
    assert unloaded == 0  # nothing was preloaded: the package left the collector alone
    lancedb_baai.preload(str(st_model), dtype="float32")
    with ctx.Pool(2) as pool:
        results = pool.map_async(workers.frozen_after_collecting, [str(st_model)] * 2).get(timeout=120)
    assert all(frozen > 1000 for frozen, _ in results), results
    assert gc.get_freeze_count() == 0  # the parent collects as before


@pytest.mark.slow
def test_eight_processes_first_load_read_only_dir(st_model, tmp_path):
    model = tmp_path / "ro" / "bge-small-en-v1.5"
    import shutil

    shutil.copytree(st_model, model)
    before = _tree(model)
    _make_read_only(model)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 15
    procs = [ctx.Process(target=workers.load_in_process, args=(str(model), start_at, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [err for _, err in results if err] == []
    assert [loads for loads, _ in results] == [1] * 8
    assert _tree(model) == before  # nothing was written into the model directory


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _make_read_only(root):
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow
def test_hub_download_happens_once_across_processes(st_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    log = tmp_path / "downloads.log"
    ctx = mp.get_context("spawn")
    start_at = time.time() + 10
    args = ("BAAI/bge-small-en-v1.5", str(st_model), str(log), 2.0, start_at)
    with ctx.Pool(4) as pool:
        dirs = pool.starmap_async(workers.resolve_with_fake_download, [args] * 4).get(timeout=180)
    assert len(log.read_text().split()) == 1  # one process downloaded, the others waited and read
    assert len(set(dirs)) == 1 and os.path.isfile(os.path.join(dirs[0], "config.json"))


def test_release_drops_engines_and_next_call_loads_again(st_model, cross_encoder):
    base = lancedb_baai.load_count()
    _vectors(st_model)
    lancedb_baai.BAAIRerankFunction(name=str(cross_encoder)).score("python", ["a list"])
    released = lancedb_baai.release(str(st_model))
    assert [r["kind"] for r in released] == ["embed"]
    assert [r["kind"] for r in lancedb_baai.cache_info()] == ["rerank"]
    _vectors(st_model)
    assert lancedb_baai.load_count() - base == 3
    assert len(lancedb_baai.release()) == 2 and lancedb_baai.cache_info() == []


def test_loaded_context_manager(st_model):
    base = lancedb_baai.load_count()
    with lancedb_baai.loaded(str(st_model), dtype="float32") as record:
        assert record["loaded"]
        _vectors(st_model)
        assert lancedb_baai.load_count() - base == 1
    assert lancedb_baai.cache_info() == []


@pytest.mark.slow
def test_release_returns_memory(minilm):
    script = textwrap.dedent(f"""
        import psutil, torch, transformers, sentence_transformers, lancedb_baai
        proc = psutil.Process()
        before = proc.memory_info().rss
        lancedb_baai.preload({str(minilm)!r})
        lancedb_baai.BAAIEmbeddings(name={str(minilm)!r}).generate_embeddings(["some text"] * 64)
        loaded = proc.memory_info().rss
        lancedb_baai.release()
        print(before, loaded, proc.memory_info().rss)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=True)
    before, loaded, after = map(int, out.stdout.split())
    assert loaded - before > 50 * 2**20  # the model really occupied memory
    assert after <= before * 1.10


def test_swap_serves_new_model_and_rollback_restores(st_model, zh_model, caplog):
    fn = lancedb_baai.BAAIEmbeddings(name=str(st_model), dtype="float32")
    old, new = _vectors(st_model), _vectors(zh_model)
    with caplog.at_level(logging.WARNING, logger="lancedb_baai"):
        record = lancedb_baai.swap(str(st_model), str(zh_model), dtype="float32")
    assert "vectors already stored" in caplog.text
    assert record["version"] == 1 and record["served"] == os.path.realpath(zh_model)
    np.testing.assert_allclose(np.stack(fn.generate_embeddings(["python function", "a list of values"])), new, atol=1e-6)
    record = lancedb_baai.rollback(str(st_model), dtype="float32")
    assert record["version"] == 2 and record["served"] == os.path.realpath(st_model)
    np.testing.assert_allclose(np.stack(fn.generate_embeddings(["python function", "a list of values"])), old, atol=1e-6)


def test_failed_swaps_leave_old_engine_serving(st_model, wide_model, cross_encoder, tmp_path):
    old = _vectors(st_model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lancedb_baai.swap(str(st_model), str(tmp_path / "missing"), dtype="float32")
    with pytest.raises(ValueError, match="not an embedding model"):
        lancedb_baai.swap(str(st_model), str(cross_encoder), dtype="float32")
    with pytest.raises(ValueError, match="48-d vectors"):
        lancedb_baai.swap(str(st_model), str(wide_model), dtype="float32")
    np.testing.assert_allclose(_vectors(st_model), old, atol=1e-6)
    assert lancedb_baai.cache_info()[0]["version"] == 0
    lancedb_baai.swap(str(st_model), str(wide_model), allow_dims_change=True, dtype="float32")
    assert _vectors(st_model).shape == (2, 48)


def test_rollback_without_swap_is_an_error(st_model):
    with pytest.raises(ValueError, match="never swapped"):
        lancedb_baai.rollback(str(st_model), dtype="float32")


@pytest.mark.slow
def test_swap_under_load_drops_no_call(st_model, zh_model, tmp_path, cross_encoder, second_cross_encoder):
    texts = ["python function", "a list of values"]
    expected = [_vectors(st_model, texts), _vectors(zh_model, texts)]
    rerank = lancedb_baai.BAAIRerankFunction(name=str(cross_encoder), dtype="float32")
    scores = [rerank.score("python", texts)]
    scores.append(lancedb_baai.BAAIRerankFunction(name=str(second_cross_encoder), dtype="float32").score("python", texts))
    embed = lancedb_baai.BAAIEmbeddings(name=str(st_model), dtype="float32")
    failures, results, stop = [], {"embed": [], "rerank": []}, threading.Event()

    def call(kind):
        while not stop.is_set():
            try:
                if kind == "embed":
                    results[kind].append(np.stack(embed.generate_embeddings(texts)))
                else:
                    results[kind].append(np.array(rerank.score("python", texts)))
            except Exception as exc:  # counted: the test requires none
                failures.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in ("embed", "embed", "rerank", "rerank")]
    for t in threads:
        t.start()
    time.sleep(0.3)
    lancedb_baai.swap(str(st_model), str(zh_model), dtype="float32")
    lancedb_baai.swap(str(cross_encoder), str(second_cross_encoder), kind="rerank", dtype="float32")
    time.sleep(0.3)
    with pytest.raises(FileNotFoundError):
        lancedb_baai.swap(str(st_model), str(tmp_path / "nope"), dtype="float32")
    lancedb_baai.rollback(str(st_model), dtype="float32")
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert len(results["embed"]) > 3 and len(results["rerank"]) > 3
    for got in results["embed"]:  # every result comes from exactly one model version
        assert sum(np.allclose(got, ref, atol=1e-5) for ref in expected) == 1
    for got in results["rerank"]:
        assert sum(np.allclose(got, ref, atol=1e-5) for ref in scores) == 1
    matches = [int(np.allclose(got, expected[1], atol=1e-5)) for got in results["embed"]]
    assert 1 in matches and matches[-1] == 0  # the new model served, then the rollback took effect


@pytest.mark.slow
def test_twenty_swaps_keep_memory_bounded(minilm, tmp_path):
    """Only the engine rollback needs stays loaded: 20 swaps end within one model of the 2-swap level."""
    import concurrent.futures
    import multiprocessing

    second = shutil.copytree(minilm, tmp_path / "minilm-copy")
    weights = sum(f.stat().st_size for f in Path(minilm).rglob("*.safetensors")) / 2**20
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        series = pool.submit(workers.swap_rss_series, str(minilm), str(second), 20).result(timeout=600)
    *swaps, rolled = series
    print("swap RSS series (MiB):", [round(s["rss_mib"]) for s in swaps])
    assert [s["depth"] for s in swaps] == [1] * 20
    assert swaps[-1]["rss_mib"] - swaps[1]["rss_mib"] < weights, (weights, [s["rss_mib"] for s in swaps])
    assert rolled["rolled_back_to"] == os.path.realpath(second)  # the previous engine is still there
