"""OpenVINO streams: bulk batches spread over infer requests give what one stream gives, in order."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import lancedb_baai
from lancedb_baai import BAAIEmbeddings
from lancedb_baai.runtimes import streams as _streams

pytest.importorskip("openvino")

TEXTS = [f"passage {i} about tables " + "and vectors " * (i % 17) for i in range(70)]


pytestmark = pytest.mark.usefixtures("own_export_cache")


def _unset(monkeypatch) -> None:
    """No stream count chosen; whatever the test sets is undone after it."""
    monkeypatch.setenv(_streams.STREAMS_ENV, "unset")
    monkeypatch.delenv(_streams.STREAMS_ENV)


def _engine(model, count: int | None, monkeypatch):
    """An OpenVINO float32 engine compiled with ``count`` streams (None: the default) on two threads.

    It is dropped from the cache after its record is checked: a second one loads.
    """
    if count is None:
        _unset(monkeypatch)
    else:
        monkeypatch.setenv(_streams.STREAMS_ENV, str(count))
    monkeypatch.setenv("LANCEDB_BAAI_THREADS", "2")
    function = BAAIEmbeddings(name=str(model), backend="openvino", precision="fp32")
    engine = function.engine()
    record = next(r for r in lancedb_baai.cache_info() if r["model"] == str(model) and r["backend"] == "openvino")
    assert record["streams"] == engine.session._compiled_now().count  # what cache_info() and the server report
    lancedb_baai.release(str(model))
    return engine


def test_two_streams_give_one_streams_vectors_in_order(sharp_st_model, monkeypatch):
    one, two = _engine(sharp_st_model, 1, monkeypatch), _engine(sharp_st_model, 2, monkeypatch)
    assert one.session._compiled_now().count == 1 and two.session._compiled_now().count == 2
    # batches of 4 inputs: 18 batches, so up to two run at once on `two`
    before = (one.forward_passes, two.forward_passes)
    ours, theirs = two.encode(TEXTS, batch_size=4), one.encode(TEXTS, batch_size=4)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert two.forward_passes - before[1] == one.forward_passes - before[0] >= len(TEXTS) // 4
    alone = np.stack([one.encode([t])[0] for t in TEXTS[:5]])  # one text per call: no padding at all
    np.testing.assert_allclose(ours[:5], alone, atol=1e-5)


def test_calls_from_threads_share_the_requests(sharp_st_model, monkeypatch):
    engine = _engine(sharp_st_model, 2, monkeypatch)
    expected = engine.encode(TEXTS)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = engine.encode(TEXTS[i::4], batch_size=3)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)  # callers holding requests never wait on each other
    for i in range(4):
        np.testing.assert_allclose(results[i], expected[i::4], atol=1e-5)


def test_a_caller_that_stops_early_hands_the_requests_back(sharp_st_model, monkeypatch):
    engine = _engine(sharp_st_model, 2, monkeypatch)
    requests = engine.session._compiled_now()
    feeds = [dict(f) for _, f, _ in engine._run(TEXTS[:12], 2, False, "embedding")]
    outputs = requests.map(iter(feeds))
    next(outputs)
    outputs.close()  # two requests were running: both go back to the pool
    assert requests._free.qsize() == 2
    with pytest.raises(Exception):  # a batch the graph refuses: its request goes back too
        list(requests.map(iter([feeds[0], {"input_ids": np.zeros((1, 2, 3), dtype=np.int64)}])))
    assert requests._free.qsize() == 2
    np.testing.assert_allclose(requests(feeds[0])[0], list(requests.map(iter(feeds[:1])))[0][0])


def test_a_process_has_one_stream_of_every_thread_unless_it_asks_for_more(sharp_st_model, monkeypatch):
    """One stream: on an idle host a short query takes every thread (docs/performance.md, "Streams")."""
    engine = _engine(sharp_st_model, None, monkeypatch)
    assert engine.session._compiled_now().count == 1
    assert engine.session._compiled_now().compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert _streams.config(2) == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"}


def test_the_stream_count_is_configurable_and_checked(monkeypatch):
    _unset(monkeypatch)
    assert _streams.streams(1) == 1 and _streams.streams(2) == 1 and _streams.streams(16) == 1
    _streams.throughput_by_default()  # a server or a Ray actor
    assert _streams.streams(1) == 1 and _streams.streams(16) == _streams.THROUGHPUT_STREAMS == 2
    assert _streams.config(2) == {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": "2"}
    monkeypatch.setenv(_streams.STREAMS_ENV, "1")
    _streams.throughput_by_default()  # the user's count stays
    assert _streams.config(8) == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "8"}
    for wrong in ("0", "two"):
        monkeypatch.setenv(_streams.STREAMS_ENV, wrong)
        with pytest.raises(ValueError, match=f"LANCEDB_BAAI_STREAMS='{wrong}'.*1 or more"):
            _streams.streams(2)


def test_the_server_asks_for_throughput_streams_before_its_models_load(monkeypatch, tmp_path):
    from lancedb_baai.serve import _logs, _run
    from lancedb_baai.serve._settings import ModelOptions, ServeConfig

    config = ServeConfig(models=[ModelOptions(kind="embed", name="a-model")], state_dir=str(tmp_path))
    seen = []
    monkeypatch.setattr(_run, "_run_uvicorn", lambda config: seen.append(os.environ.get(_streams.STREAMS_ENV)))
    monkeypatch.setattr(_logs, "configure", lambda *args: None)  # the test process keeps its logging
    _unset(monkeypatch)
    _run.run(config)
    assert seen == [str(_streams.THROUGHPUT_STREAMS)]
    monkeypatch.setenv(_streams.STREAMS_ENV, "1")  # the user's count stays
    _run.run(config)
    assert seen[-1] == "1"


def test_a_ray_batch_actor_compiles_with_throughput_streams(sharp_st_model, monkeypatch):
    from lancedb_baai.ray.batches import BAAIEmbedBatches

    _unset(monkeypatch)
    monkeypatch.setenv("LANCEDB_BAAI_THREADS", "2")
    actor = BAAIEmbedBatches(BAAIEmbeddings(name=str(sharp_st_model), backend="openvino", precision="fp32"))
    records = [r for r in actor.cache_info() if r["model"] == str(sharp_st_model) and r["backend"] == "openvino"]
    lancedb_baai.release(str(sharp_st_model))
    assert [r["streams"] for r in records] == [2]
