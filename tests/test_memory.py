"""One copy of the weights per host: N worker processes map one copy; each engine reports where its weights live.

Memory is read from ``/proc/<pid>/smaps`` of real spawned processes: what a model costs
N workers is the proportional set size of the weight files they map (a page shared by k
processes counts 1/k in each) plus the anonymous memory each worker gained loading it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import _memory_workers as workers
import lancedb_baai
from lancedb_baai import testing
from lancedb_baai.engines import choice
from lancedb_baai.models import exports
from lancedb_baai.runtimes import memory, onnx
from lancedb_baai.runtimes.device import cpu_bf16_report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SHARING = [("torch", "float32"), ("onnx", "float32")] + (
    [("torch", "bfloat16")] if cpu_bf16_report().use_bf16 else [])
TEXTS = ["a text about python", "another one"]


@pytest.fixture(scope="module")
def mid_model(models_root):
    """About 150 MB of float32 weights: big enough that one copy per worker would show."""
    return testing.build_st_embedder(models_root / "memory" / "bge-base-en-v1.5", hidden=768, layers=8, seed=3)


@pytest.fixture(scope="module")
def tiny_model(models_root):
    return testing.build_st_embedder(models_root / "memory" / "tiny", hidden=32, layers=1, seed=4)


@pytest.mark.slow
@pytest.mark.parametrize("backend,dtype", SHARING)
def test_four_spawned_workers_hold_about_one_copy_of_the_weights(mid_model, tiny_model, backend, dtype):
    for model in (mid_model, tiny_model):  # the export / cast copy exists: each worker only opens it
        lancedb_baai.BAAIEmbeddings(name=str(model), backend=backend, dtype=dtype).generate_embeddings(TEXTS)
    lancedb_baai.release()
    ctx = mp.get_context("spawn")
    queue, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=workers.load_and_hold,
                         args=(str(tiny_model), str(mid_model), backend, dtype, queue, release)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=600) for _ in procs]
        mapped = sum(memory.mapped_in([mid_model, exports.cache_root()], r["pid"], "Pss") for r in results)
    finally:
        release.set()
        for p in procs:
            p.join(60)
    private = sum(max(0, r["private"]) for r in results)
    weights = results[0]["record"]["weights_bytes"]
    figures = {"weights": weights, "mapped_pss": mapped, "private": private, "x": (mapped + private) / weights}
    assert mapped + private <= 1.3 * weights, figures
    assert mapped >= 0.8 * weights, figures  # the weights are read from the map, not only counted
    for r in results:
        assert r["record"]["shared_weights"] is True, r["record"]
        assert r["record"]["weights_mapped_bytes"] >= 0.9 * weights, r["record"]
        np.testing.assert_allclose(r["vector"], results[0]["vector"], atol=1e-6)


def test_openvino_says_it_holds_a_private_copy(st_model):
    pytest.importorskip("openvino")
    lancedb_baai.BAAIEmbeddings(name=str(st_model), backend="openvino", dtype="float32").generate_embeddings(TEXTS)
    record = lancedb_baai.cache_info()[0]
    assert record["shared_weights"] is False
    assert "repacks the weights into each process" in record["shared_weights_reason"]
    assert record["weights_mapped_bytes"] > 0 and record["weights_bytes"] > 0


def test_mapped_onnx_weights_give_the_outputs_of_private_ones(st_model):
    """The pre-packed, mapped copy computes what ONNX Runtime computes from the export pre-packing in memory."""
    import onnxruntime as ort

    fn = lancedb_baai.BAAIEmbeddings(name=str(st_model), backend="onnx", dtype="float32")
    fn.generate_embeddings(TEXTS)
    loaded = fn.loaded()
    assert exports.manifest(onnx.packed_dir(loaded.export)) is not None
    record = lancedb_baai.cache_info()[0]
    assert record["shared_weights"] is True and record["weights_mapped_bytes"] > 0
    engine = loaded.engine
    feeds = engine.calibration_feeds(engine.graph, TEXTS * 4)[0]
    private = ort.InferenceSession(str(loaded.export / "model.onnx"), providers=["CPUExecutionProvider"])
    for ours, theirs in zip(engine.session.run(feeds), private.run(None, dict(feeds))):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_damaged_prepacked_copy_is_reported_unshared_then_built_again(st_model):
    fn = lancedb_baai.BAAIEmbeddings(name=str(st_model), backend="onnx", dtype="float32")
    expected = fn.generate_embeddings(TEXTS)
    export = fn.loaded().export
    with open(onnx.packed_dir(export) / "weights.data", "r+b") as f:  # same size, other bytes
        f.seek(100)
        f.write(b"\xff" * 64)
    assert "pre-packed for this CPU is missing" in onnx.ONNX.unshared(export, "float32")
    lancedb_baai.release()
    again = lancedb_baai.BAAIEmbeddings(name=str(st_model), backend="onnx", dtype="float32")
    np.testing.assert_allclose(again.generate_embeddings(TEXTS), expected, atol=1e-6)
    assert exports.manifest(onnx.packed_dir(export)) is not None
    assert lancedb_baai.cache_info()[0]["shared_weights"] is True


@pytest.mark.skipif(not cpu_bf16_report().use_bf16, reason="torch runs bf16 natively only on bf16 CPUs")
def test_torch_bf16_maps_one_cast_copy_with_the_outputs_of_a_private_cast(st_model):
    import torch

    from lancedb_baai.runtimes import torch_modules

    fn = lancedb_baai.BAAIEmbeddings(name=str(st_model), backend="torch", dtype="bfloat16")
    fn.generate_embeddings(TEXTS)
    record = lancedb_baai.cache_info()[0]
    assert record["shared_weights"] is True and "weights.pt" in record["shared_weights_reason"]
    engine = fn.loaded().engine
    feeds = engine.calibration_feeds(engine.graph, TEXTS)[0]
    private = torch_modules.embedder(Path(st_model)).module.to(torch.bfloat16)
    with torch.inference_mode():
        theirs = private(*(torch.from_numpy(feeds[name]) for name in engine.graph.inputs)).float().numpy()
    np.testing.assert_array_equal(engine.session.run(feeds)[0], theirs)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_worker_keeps_serving_when_the_files_it_maps_are_replaced(st_model, tmp_path, backend):
    """A new model file or export is written beside and renamed into place: the mapped old one stays readable."""
    model = tmp_path / "bge-small-en-v1.5"
    shutil.copytree(st_model, model)
    fn = lancedb_baai.BAAIEmbeddings(name=str(model), backend=backend, dtype="float32")
    before = fn.generate_embeddings(TEXTS)
    other = testing.build_st_embedder(tmp_path / "other", seed=9)
    os.replace(other / "model.safetensors", model / "model.safetensors")  # new weights, atomically
    export = fn.loaded().export
    if export is not None:  # the export is made again: removed, then a new one renamed into place
        shutil.rmtree(export)
        shutil.copytree(st_model, export)
    np.testing.assert_allclose(fn.generate_embeddings(TEXTS), before, atol=1e-6)


def test_auto_takes_a_backend_that_shares_weights_in_one_of_several_workers(st_model, monkeypatch):
    monkeypatch.delenv("LANCEDB_BAAI_BACKEND", raising=False)
    monkeypatch.setenv(choice.WORKERS_ENV, "4")
    choice.forget()
    try:
        record = lancedb_baai.preload(str(st_model))
    finally:
        choice.forget()
    assert record["backend"] in ("onnx", "torch") and record["shared_weights"] is True, record
    assert f"one of several worker processes ({choice.WORKERS_ENV}=4)" in record["backend_reason"]


def test_a_process_started_by_multiprocessing_is_one_of_several(st_model, monkeypatch):
    monkeypatch.delenv("LANCEDB_BAAI_BACKEND", raising=False)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=workers.choice_in_child, args=(str(st_model), queue))
    child.start()
    backend, reason = queue.get(timeout=300)
    child.join(60)
    assert backend in ("onnx", "torch"), reason
    assert "one of several worker processes (a process started by multiprocessing)" in reason


def test_a_bad_workers_setting_says_what_it_needs(monkeypatch):
    monkeypatch.setenv(choice.WORKERS_ENV, "four")
    with pytest.raises(ValueError, match="LANCEDB_BAAI_WORKERS='four' must be the number of worker processes"):
        choice.one_of_several()
    monkeypatch.setenv(choice.WORKERS_ENV, "1")
    assert choice.one_of_several() is None  # one worker: nothing to share with
