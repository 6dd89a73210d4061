"""`lancedb-baai serve --workers 2`: gunicorn with preloaded models, swaps reaching every worker.

Each worker writes what it serves to ``<state-dir>/workers/<pid>.json``; ``/admin/engines``
(answered by whichever worker gets the request) lists them all, so the tests read every
worker's load count and model version from one route.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn_worker")

from _serve import Server, wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(sys.platform == "win32", reason="gunicorn needs a Unix")]


@pytest.fixture(scope="module")
def workers(tmp_path_factory, st_model, zh_model):
    tmp = tmp_path_factory.mktemp("workers")
    srv = Server(["--embed", st_model, "--workers", 2, "--state-dir", tmp / "state"], tmp / "gunicorn.log").start()
    yield srv
    srv.stop()


def both_workers(server, check=lambda w: True):
    """The two live workers' records once both pass ``check`` (polled, bounded)."""
    def ready():
        records = server.engines()["workers"]
        return records if len(records) == 2 and all(check(w) for w in records) else None

    return wait_for(ready, timeout=60)


def test_workers_share_the_masters_models(workers, st_model):
    records = both_workers(workers)
    assert all(w["load_count"] == 0 for w in records), records  # loaded once, in the master
    assert os.getpid() not in {w["pid"] for w in records}
    response = workers.post("/v1/embeddings", {"model": str(st_model), "input": ["x"]})
    assert response.status_code == 200 and response.headers["x-model-version"] == f"{st_model}@0"
    assert "lancedb_baai_requests_total" in workers.get("/metrics").text


def test_a_killed_worker_is_replaced_with_no_load(workers, st_model):
    victim = both_workers(workers)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    records = both_workers(workers, lambda w: w["pid"] != victim)
    assert all(w["load_count"] == 0 for w in records), records
    for _ in range(4):
        assert workers.post("/v1/embeddings", {"model": str(st_model), "input": ["x"]}).status_code == 200


def test_one_swap_reaches_every_worker(workers, st_model, zh_model):
    swapped = workers.post("/admin/swap", {"model": str(st_model), "new_model": str(zh_model)},
                           headers=workers.admin())
    assert swapped.status_code == 200, swapped.text
    generation = swapped.json()["generation"]
    records = both_workers(workers, lambda w: w["generation"] == generation)
    assert all(w["served"][str(st_model)] == f"{zh_model}@1" and w["load_count"] == 1 for w in records), records
    for _ in range(6):  # whichever worker answers, it answers with the new model
        response = workers.post("/v1/embeddings", {"model": str(st_model), "input": ["x"]})
        assert response.headers["x-model-version"] == f"{zh_model}@1"
    back = workers.post("/admin/rollback", {"model": str(st_model)}, headers=workers.admin())
    assert back.status_code == 200, back.text
    records = both_workers(workers, lambda w: w["generation"] == back.json()["generation"])
    assert all(w["served"][str(st_model)] == f"{st_model}@2" and w["load_count"] == 1 for w in records), records


def test_load_and_unload_reach_every_worker(workers, cross_encoder):
    loaded = workers.post("/admin/load", {"kind": "rerank", "model": str(cross_encoder), "alias": "reranker"},
                          headers=workers.admin())
    assert loaded.status_code == 200, loaded.text
    generation = loaded.json()["generation"]
    both_workers(workers, lambda w: w["generation"] >= generation and "reranker" in w["served"])
    for _ in range(4):  # whichever worker answers, it serves the loaded model
        assert workers.post("/rerank", {"model": "reranker", "query": "q", "texts": ["a", "b"]}).status_code == 200
    unloaded = workers.post("/admin/unload", {"model": "reranker"}, headers=workers.admin())
    assert unloaded.status_code == 200, unloaded.text
    both_workers(workers, lambda w: w["generation"] >= unloaded.json()["generation"] and "reranker" not in w["served"])
    for _ in range(4):
        gone = workers.post("/rerank", {"model": "reranker", "query": "q", "texts": ["a"]})
        assert gone.status_code == 404 and "reranker" in gone.json()["error"]["message"]
