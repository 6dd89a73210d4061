"""The engine cache: one load per model per process, counted where users would feel it."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading

import lancedb
import numpy as np
import pytest
from lancedb.embeddings import get_registry

import lancedb_baai
from lancedb_baai.engines.cache import EngineCache, EngineKey

import _workers
from _tables import text_table

CHILD_TIMEOUT = 180


def make(name, **options):
    options = {"device": "cpu", "dtype": "float32", **options}
    return get_registry().get("local-baai").create(name=str(name), **options)


class Loads:
    """Model loads in this process since the block started (``load_count`` is cumulative)."""

    def __enter__(self) -> Loads:
        self.start = lancedb_baai.load_count()
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def count(self) -> int:
        return lancedb_baai.load_count() - self.start


def make_table(db_path, fn, rows=("the python function", "a list of int", "import the module")):
    return text_table(db_path, fn, [{"text": text} for text in rows])


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this venv, offline) and return its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --- one load per process in what users do ------------------------------------------------


@pytest.mark.slow
def test_hundred_adds_and_searches_load_once(st_model, tmp_path):
    fn = make(st_model)
    with Loads() as loads:
        table = make_table(tmp_path, fn)
        for i in range(100):
            table.add([{"text": f"row {i} of the python data"}])
            assert table.search(f"query {i}").limit(3).to_list()
    assert loads.count == 1
    assert table.count_rows() == 103
    (record,) = lancedb_baai.cache_info()
    assert record["loads"] == 1 and record["calls"] >= 201


def test_reopening_a_table_five_times_loads_once(st_model, tmp_path):
    make_table(tmp_path, make(st_model))
    lancedb_baai.release()
    with Loads() as loads:
        for _ in range(5):
            table = lancedb.connect(tmp_path).open_table("docs")
            assert len(table.search("python").limit(2).to_list()) == 2
    assert loads.count == 1
    assert [r["loads"] for r in lancedb_baai.cache_info()] == [1]


def test_pickled_copy_shares_the_engine(st_model):
    fn = make(st_model)
    with Loads() as loads:
        vector = fn.compute_source_embeddings(["x"])[0]
        clone = pickle.loads(pickle.dumps(fn))
        np.testing.assert_array_equal(clone.compute_source_embeddings(["x"])[0], vector)
    assert loads.count == 1


def test_configs_differing_only_in_call_options_share_one_engine(sharp_plain_model):
    fns = [make(sharp_plain_model), make(sharp_plain_model, normalize=False),
           make(sharp_plain_model, query_instruction="q: "), make(sharp_plain_model, batch_size=3)]
    with Loads() as loads:
        norms = [[np.linalg.norm(fn.compute_query_embeddings("sort a list")[0]) for fn in fns] for _ in range(3)]
    assert loads.count == 1
    assert len(lancedb_baai.cache_info()) == 1
    for row in norms:  # the options still apply per object
        assert row[0] == pytest.approx(1.0, abs=1e-5) and abs(row[1] - 1.0) > 0.1


def test_engine_options_make_separate_engines(st_model):
    with Loads() as loads:
        make(st_model).compute_source_embeddings(["x"])
        make(st_model, dtype="bfloat16").compute_source_embeddings(["x"])
        make(st_model, max_length=16).compute_source_embeddings(["x"])
    assert loads.count == 3
    assert sorted((r["dtype"], r["max_length"] or 0) for r in lancedb_baai.cache_info()) == [
        ("bfloat16", 0), ("float32", 0), ("float32", 16)]


def test_one_directory_under_several_names_loads_once(st_model, tmp_path):
    link = tmp_path / "bge-link"
    link.symlink_to(st_model)
    with Loads() as loads:
        for name in (st_model, f"{st_model}/", link):
            make(name).compute_source_embeddings(["x"])
    assert loads.count == 1


def test_two_models_cached_at_once(st_model, plain_model):
    a, b = make(st_model), make(plain_model)
    with Loads() as loads:
        for _ in range(3):
            a.compute_source_embeddings(["x"])
            b.compute_source_embeddings(["x"])
    assert loads.count == 2
    info = lancedb_baai.cache_info()
    assert {r["model"] for r in info} == {os.path.realpath(st_model), os.path.realpath(plain_model)}
    assert all(r["loads"] == 1 and r["calls"] == 3 and r["pid"] == os.getpid() for r in info)


def test_eight_threads_on_a_cold_model_load_once(sharp_st_model):
    barrier = threading.Barrier(8)
    results, errors = [None] * 8, []

    def work(i: int) -> None:
        try:
            fn = make(sharp_st_model)  # each thread its own object, as in a server
            barrier.wait(timeout=60)
            results[i] = fn.compute_source_embeddings(["thread text", f"thread {i}"])[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with Loads() as loads:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []
    assert loads.count == 1
    for vector in results[1:]:
        np.testing.assert_allclose(vector, results[0], atol=1e-6)


# --- the cache on its own: per-key locking ------------------------------------------------


def _key(model: str) -> EngineKey:
    return EngineKey("embed", model, None, "cpu", "float32", None)


@pytest.fixture
def fresh_cache(monkeypatch):
    """A private EngineCache; process-wide thread settings are put back afterwards.

    ``EngineCache()`` currently calls its after-fork thread settling in ``__init__`` too
    (see test_import_keeps_the_callers_torch_threads), which would leave this test process
    on one torch thread for the rest of the session.
    """
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
    yield EngineCache()
    if threads is not None:
        torch.set_num_threads(threads)


def test_cold_key_is_loaded_once_by_concurrent_callers(fresh_cache):
    cache, calls, gate = fresh_cache, [], threading.Event()

    def slow_loader(key):
        calls.append(key)
        gate.wait(60)
        return object()

    engines = []
    threads = [threading.Thread(target=lambda: engines.append(cache.get(_key("a"), slow_loader)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(60)
    assert len(calls) == 1 and len(engines) == 6 and len({id(e) for e in engines}) == 1
    assert cache.total_loads() == 1
    (record,) = cache.info()
    assert record["loads"] == 1 and record["calls"] == 6


def test_slow_load_of_one_key_does_not_block_another(fresh_cache):
    cache = fresh_cache
    a_started, a_may_finish, b_done = threading.Event(), threading.Event(), threading.Event()

    def slow_loader(key):
        a_started.set()
        assert a_may_finish.wait(60)
        return "engine a"

    a_thread = threading.Thread(target=lambda: cache.get(_key("a"), slow_loader))
    a_thread.start()
    try:
        assert a_started.wait(60)
        b_result = []
        b_thread = threading.Thread(target=lambda: (b_result.append(cache.get(_key("b"), lambda k: "engine b")),
                                                    b_done.set()))
        b_thread.start()
        assert b_done.wait(60), "loading key b waited for key a's load"
        assert b_result == ["engine b"] and a_thread.is_alive()
        assert [r["loaded"] for r in cache.info()] == [False, True]
    finally:
        a_may_finish.set()
        a_thread.join(60)
    assert cache.get(_key("a"), slow_loader) == "engine a"
    assert cache.total_loads() == 2


def test_failed_load_is_not_cached_and_can_be_retried(fresh_cache):
    cache, attempts = fresh_cache, []

    def flaky(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return "engine"

    with pytest.raises(OSError, match="disk hiccup"):
        cache.get(_key("a"), flaky)
    assert cache.get(_key("a"), flaky) == "engine"
    assert len(attempts) == 2 and cache.total_loads() == 1


# --- other processes ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(CHILD_TIMEOUT)
def test_fresh_process_opens_the_table_from_metadata_and_loads_once(plain_model, tmp_path):
    make_table(tmp_path, make(plain_model))  # a plain export: the child needs no sentence-transformers
    out = run_python(
        "import json, lancedb, lancedb_baai\n"
        f"table = lancedb.connect({str(tmp_path)!r}).open_table('docs')\n"
        "for q in ('python', 'list', 'module'):\n"
        "    rows = table.search(q).limit(2).to_list()\n"
        "print(json.dumps({'loads': lancedb_baai.load_count(), 'rows': len(rows),\n"
        "                  'model': lancedb_baai.cache_info()[0]['model']}))\n"
    )
    child = json.loads(out.strip().splitlines()[-1])
    assert child == {"loads": 1, "rows": 2, "model": os.path.realpath(plain_model)}


@pytest.mark.slow
@pytest.mark.timeout(CHILD_TIMEOUT)
def test_spawn_pool_loads_once_per_worker(plain_model):
    fn = make(plain_model)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    with ctx.Pool(2, initializer=_workers.wait_for_peers, initargs=(barrier,)) as pool:
        results = pool.map_async(_workers.embed_and_count, [fn] * 8, chunksize=1).get(CHILD_TIMEOUT)
    per_worker: dict[int, list[int]] = {}
    for pid, loads in results:
        per_worker.setdefault(pid, []).append(loads)
    assert len(results) == 8 and len(per_worker) == 2 and os.getpid() not in per_worker
    assert all(set(counts) == {1} for counts in per_worker.values())
    assert sum(max(counts) for counts in per_worker.values()) == 2


@pytest.mark.timeout(CHILD_TIMEOUT)
def test_import_is_light():
    out = run_python(
        "import json, sys, lancedb_baai\n"
        "from lancedb.embeddings import get_registry\n"
        "fn = get_registry().get('local-baai').create(name='BAAI/bge-small-en-v1.5', device='cpu')\n"
        "rr = get_registry().get('local-baai-rerank').create(name='BAAI/bge-reranker-base')\n"
        "import lancedb_baai.serve, lancedb_baai.runtimes.remote\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'FlagEmbedding', 'fastapi', 'uvicorn',\n"
        "         'starlette', 'prometheus_client')\n"
        "print(json.dumps({'dims': fn.ndims(), 'info': lancedb_baai.cache_info(),\n"
        "                  'heavy': sorted(m for m in sys.modules if m.split('.')[0] in heavy)}))\n"
    )
    assert json.loads(out.strip().splitlines()[-1]) == {"dims": 384, "info": [], "heavy": []}


@pytest.mark.timeout(CHILD_TIMEOUT)
def test_import_keeps_the_callers_torch_threads():
    out = run_python(
        "import json, os, torch\n"
        "torch.set_num_threads(2)\n"
        "os.environ.pop('TOKENIZERS_PARALLELISM', None)\n"
        "import lancedb_baai\n"
        "print(json.dumps([torch.get_num_threads(), os.environ.get('TOKENIZERS_PARALLELISM')]))\n"
    )
    assert json.loads(out.strip().splitlines()[-1]) == [2, None]


@pytest.mark.timeout(CHILD_TIMEOUT)
def test_reload_and_reimport_do_not_raise(st_model):
    out = run_python(
        "import importlib, json, sys, lancedb_baai\n"
        "importlib.reload(lancedb_baai)\n"
        "import lancedb_baai\n"
        "for name in [m for m in sys.modules if m.split('.')[0] == 'lancedb_baai']:\n"
        "    del sys.modules[name]\n"
        "import lancedb_baai\n"
        "from lancedb.embeddings import get_registry\n"
        "registry = get_registry()\n"
        "fn = registry.get('local-baai').create(name=" + repr(str(st_model)) + ", dtype='float32')\n"
        "print(json.dumps([registry.get('local-baai') is lancedb_baai.BAAIEmbeddings,\n"
        "                  registry.get('local-baai-rerank') is lancedb_baai.BAAIRerankFunction,\n"
        "                  fn.ndims(), lancedb_baai.load_count()]))\n"
    )
    assert json.loads(out.strip().splitlines()[-1]) == [True, True, 32, 0]
