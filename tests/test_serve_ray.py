"""`lancedb_baai.serve.ray` on a real local Ray cluster: 2 replicas, tiny models, real clients.

One Ray cluster and one application serve the whole module (Ray's start-up is paid once). The
tests run in file order: first what the models as started answer, then the swaps that must
change nothing, then a swap under load, a rollback, a swap again, a killed replica, the
application deployed again from its config (by serve.run, then by a serve-deploy config), and
last the command line, which joins the same cluster.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction, testing  # noqa: E402
from lancedb_baai.serve import ModelOptions, ServeConfig  # noqa: E402

from _serve import HOST, TOKEN, free_port, wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

APP = "lancedb-baai-test"
ALIAS = "text-embedding-3-small"
RERANK = "reranker"
KEY = "test-api-key"
TEXTS = ["a python list", "dictionary views", "the with statement", "generators yield values"]
PASSAGES = ["lists are mutable sequences", "tuples are immutable", "the for statement", "lambda"]


@pytest.fixture(scope="module")
def wide_model(models_root):
    """An embedder with 48-d vectors (the others make 32-d ones)."""
    return testing.build_st_embedder(models_root / "wide-ray" / "bge-small-en-v1.5", hidden=48, seed=7)


@pytest.fixture(scope="module")
def config(sharp_st_model, sharp_cross_encoder):
    return ServeConfig(models=[ModelOptions(kind="embed", name=str(sharp_st_model), alias=ALIAS, dtype="float32"),
                               ModelOptions(kind="rerank", name=str(sharp_cross_encoder), alias=RERANK,
                                            dtype="float32")],
                       admin_token=TOKEN, api_keys=[KEY], max_texts=64)


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray with Serve's proxy on a free loopback port; shut down after the module."""
    from lancedb_baai.serve import ray as serve_ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 namespace="serve")
    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    serve_ray.forget(APP)
    yield f"http://{HOST}:{port}"
    serve_ray.forget(APP)
    serve.shutdown()
    if started:
        ray.shutdown()


def deploy(config):
    from lancedb_baai.serve import ray as serve_ray

    serve.run(serve_ray.app(config, replicas=2, num_cpus=1, name=APP), name=APP, route_prefix="/")


@pytest.fixture(scope="module")
def proxy(cluster, config):
    deploy(config)
    return cluster


def data_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def post(proxy, path, body, headers=None) -> httpx.Response:
    return httpx.post(proxy + path, json=body, headers=data_headers() if headers is None else headers, timeout=120)


def replicas(proxy) -> list[dict]:
    """What each running replica serves, as any replica's /admin/engines reports it."""
    response = httpx.get(proxy + "/admin/engines", headers=admin_headers(), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["workers"]


def served_everywhere(proxy, header: str) -> bool:
    found = replicas(proxy)
    return len(found) == 2 and all(r["served"][ALIAS] == header for r in found)


def local(path) -> BAAIEmbeddings:
    return BAAIEmbeddings(name=str(path), dtype="float32", device="cpu")


# ------------------------------------------------------------------ the models as started


def test_embeddings_and_rerank_equal_in_process(proxy, sharp_st_model, sharp_cross_encoder):
    response = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": TEXTS})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == f"{sharp_st_model}@0"
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, np.stack(local(sharp_st_model).generate_embeddings(TEXTS)), atol=1e-5)

    ranked = post(proxy, "/rerank", {"model": RERANK, "query": "mutable list", "texts": PASSAGES,
                                     "raw_scores": True}).json()
    expected = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32", device="cpu").score(
        "mutable list", PASSAGES)
    np.testing.assert_allclose([r["score"] for r in sorted(ranked, key=lambda r: r["index"])], expected, atol=1e-5)
    cohere = post(proxy, "/v2/rerank", {"model": RERANK, "query": "mutable list", "documents": PASSAGES}).json()
    assert [r["index"] for r in cohere["results"]] == [r["index"] for r in ranked]


def test_routes_refuse_missing_or_wrong_keys_and_tokens(proxy):
    swap = {"model": ALIAS, "new_model": "/nowhere"}
    assert post(proxy, "/admin/swap", swap, headers={}).status_code == 401
    wrong = post(proxy, "/admin/swap", swap, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    assert post(proxy, "/admin/rollback", {"model": ALIAS}, headers={}).status_code == 401
    assert httpx.get(proxy + "/admin/engines", timeout=60).status_code == 401
    refused = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": ["x"]}, headers={"Authorization": "Bearer no"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
    assert httpx.get(proxy + "/readyz", timeout=60).status_code == 200  # open to probes
    bad = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": [1, 2]})
    assert bad.status_code == 422 and "error" in bad.json()


def test_each_replica_reports_how_long_its_models_took_to_load(proxy):
    """What a swap's time is set against: each replica's own load of what it serves."""
    found = replicas(proxy)
    assert len(found) == 2 and all(r["load_s"][ALIAS] > 0 and r["load_s"][RERANK] > 0 for r in found)


def test_each_replica_takes_as_many_requests_as_its_batcher_queues(proxy, config):
    """Not Ray Serve's 5: beyond them requests would wait in the proxy, an admin action behind them,
    and the micro-batcher would merge at most 5 requests."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"][APP]["deployments"]["LanceDBBAAI"]
    assert details["deployment_config"]["max_ongoing_requests"] == config.max_queue


def test_placement_counts_the_replicas_that_can_share_a_node():
    """Each replica sets ``LANCEDB_BAAI_WORKERS`` to this count, so "auto" weighs sharing weights only
    where replicas share a node (one replica alone on it takes the fastest backend)."""
    from lancedb_baai.serve.ray import Placement

    assert Placement(replicas=1, num_cpus=2).replicas_per_node(2) == 1  # alone: "auto" takes the fastest
    assert Placement(replicas=2, num_cpus=1).replicas_per_node(2) == 2
    assert Placement(replicas=3, num_cpus=1).replicas_per_node(2) == 2  # the third runs on another node
    assert Placement(autoscale=(1, 4), num_cpus=0.5).replicas_per_node(2) == 4
    assert Placement(autoscale=(1, 4), num_cpus=1).replicas_per_node(8) == 4
    assert Placement(replicas=1, num_cpus=4).replicas_per_node(2) == 1


def test_health_readiness_and_metrics_per_replica(proxy):
    assert httpx.get(proxy + "/healthz", timeout=60).json() == {"status": "alive"}
    ready = httpx.get(proxy + "/readyz", timeout=60).json()
    assert ready["status"] == "ready" and set(ready["models"]) == {ALIAS, RERANK}
    metrics = httpx.get(proxy + "/metrics", headers=data_headers(), timeout=60)
    assert metrics.status_code == 200
    text = metrics.text
    replica = metrics.headers["x-replica-id"]
    assert f'lancedb_baai_ray_generation{{replica="{replica}"}}' in text
    assert "lancedb_baai_ray_replicas_on_recorded 2.0" in text and "lancedb_baai_ray_replicas 2.0" in text
    ids = {r["replica"] for r in replicas(proxy)}
    assert len(ids) == 2 and replica in ids


def test_openai_function_and_url_function_against_the_proxy(proxy, sharp_st_model, sharp_cross_encoder,
                                                             tmp_path, monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    fn = get_registry().get("openai").create(name=ALIAS, dim=32, base_url=proxy + "/v1")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    expected = np.stack(local(sharp_st_model).generate_embeddings(TEXTS))
    np.testing.assert_allclose(np.stack(table.to_pandas()["vector"].to_list()), expected, atol=1e-5)

    remote = BAAIEmbeddings(name=ALIAS, url=proxy, api_key=KEY)
    np.testing.assert_allclose(np.stack(remote.generate_embeddings(TEXTS)), expected, atol=1e-5)
    scores = BAAIRerankFunction(name=RERANK, url=proxy, api_key=KEY).score("generators", TEXTS)
    np.testing.assert_allclose(scores, BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32").score(
        "generators", TEXTS), atol=1e-5)


# ------------------------------------------------------------------ swaps that change nothing


def test_swap_to_a_missing_path_or_another_width_changes_nothing(proxy, sharp_st_model, wide_model, tmp_path):
    before = replicas(proxy)
    missing = post(proxy, "/admin/swap", {"model": ALIAS, "new_model": str(tmp_path / "nowhere")}, admin_headers())
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "model_path_not_found"
    wide = post(proxy, "/admin/swap", {"model": ALIAS, "new_model": str(wide_model)}, admin_headers())
    assert wide.status_code == 409 and wide.json()["error"]["type"] == "dims_changed"
    after = replicas(proxy)
    assert [(r["replica"], r["generation"], r["served"]) for r in after] == \
           [(r["replica"], r["generation"], r["served"]) for r in before]
    assert all(r["served"][ALIAS] == f"{sharp_st_model}@0" for r in after)
    for _ in range(6):
        response = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": ["x"]})
        assert response.headers["x-model-version"] == f"{sharp_st_model}@0"


# ------------------------------------------------------------------ swap, rollback, crash, redeploy


def test_swap_under_8_concurrent_clients_reaches_both_replicas(proxy, sharp_st_model, sharp_plain_model):
    old, new = f"{sharp_st_model}@0", f"{sharp_plain_model}@1"
    answers: list[tuple[float, int, str, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=proxy, headers=data_headers(), timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post("/v1/embeddings", json={"model": ALIAS, "input": TEXTS})
                answers.append((sent, response.status_code, response.headers.get("x-model-version"),
                                response.headers.get("x-replica-id")))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(answers) >= 16)
    swap = post(proxy, "/admin/swap", {"model": ALIAS, "new_model": str(sharp_plain_model)}, admin_headers())
    swapped_at = time.monotonic()
    count = len(answers)
    wait_for(lambda: len(answers) >= count + 32)
    stop.set()
    for thread in threads:
        thread.join()

    assert swap.status_code == 200, swap.text
    assert swap.json()["served"] == str(sharp_plain_model) and swap.json()["previous"] == str(sharp_st_model)
    assert [a for a in answers if a[1] != 200] == []  # no failed request
    assert {a[2] for a in answers} <= {old, new}  # each response from exactly one model version
    assert {a[2] for a in answers if a[0] > swapped_at} == {new}  # sent after the swap answered: every replica had it
    assert served_everywhere(proxy, new)
    assert len({a[3] for a in answers}) == 2  # the load reached both replicas
    vectors = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": TEXTS}).json()["data"]
    np.testing.assert_allclose(np.array([d["embedding"] for d in vectors], dtype=np.float32),
                               np.stack(local(sharp_plain_model).generate_embeddings(TEXTS)), atol=1e-5)


def test_rollback_reaches_both_replicas(proxy, sharp_st_model, sharp_plain_model):
    back = post(proxy, "/admin/rollback", {"model": ALIAS}, admin_headers())
    assert back.status_code == 200, back.text
    assert back.json()["served"] == str(sharp_st_model) and back.json()["previous"] == str(sharp_plain_model)
    header = f"{sharp_st_model}@{back.json()['version']}"
    assert served_everywhere(proxy, header)
    for _ in range(6):
        assert post(proxy, "/v1/embeddings", {"model": ALIAS, "input": ["x"]}).headers["x-model-version"] == header


def test_a_killed_replica_comes_back_on_the_swapped_model(proxy, sharp_plain_model):
    swap = post(proxy, "/admin/swap", {"model": ALIAS, "new_model": str(sharp_plain_model)}, admin_headers())
    assert swap.status_code == 200, swap.text
    header = f"{sharp_plain_model}@{swap.json()['version']}"
    assert served_everywhere(proxy, header)

    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"][APP]["deployments"]
    victim = details["LanceDBBAAI"]["replicas"][0]
    ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)
    fresh = wait_for(lambda: [r for r in replicas(proxy) if r["replica"] != victim["replica_id"]
                              and r["replica"] not in {d["replica_id"] for d in details["LanceDBBAAI"]["replicas"]}],
                     timeout=300)
    assert fresh[0]["served"][ALIAS] == header
    assert fresh[0]["load_count"] == 2  # the swapped embedder and the reranker: never the command line's model
    assert served_everywhere(proxy, header)


def test_the_application_deployed_again_comes_up_on_the_last_good_model(proxy, config, sharp_plain_model):
    header = replicas(proxy)[0]["served"][ALIAS]
    assert header.startswith(f"{sharp_plain_model}@")
    serve.delete(APP)
    deploy(config)  # the same config: the command line's model is sharp_st_model
    assert served_everywhere(proxy, header)
    response = post(proxy, "/v1/embeddings", {"model": ALIAS, "input": TEXTS})
    assert response.status_code == 200 and response.headers["x-model-version"] == header


def test_a_serve_deploy_config_comes_up_on_the_last_good_model_and_rolls_back_in_place(proxy, config,
                                                                                     sharp_st_model,
                                                                                     sharp_plain_model):
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from lancedb_baai.serve import ray as serve_ray

    header = replicas(proxy)[0]["served"][ALIAS]
    serve.delete(APP)
    spec = serve_ray.config_file(config, serve_ray.Placement(replicas=2, num_cpus=1, name=APP))
    assert TOKEN not in str(spec) and KEY not in str(spec)  # secrets travel in the environment
    application = {**spec["applications"][0], "runtime_env": {"env_vars": {
        "LANCEDB_BAAI_ADMIN_TOKEN": TOKEN, "LANCEDB_BAAI_API_KEYS": KEY}}}
    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema(applications=[application]))
    wait_for(lambda: served_everywhere(proxy, header) if _running(APP) else False, timeout=300)

    back = post(proxy, "/admin/rollback", {"model": ALIAS}, admin_headers())
    assert back.status_code == 200, back.text
    assert served_everywhere(proxy, f"{sharp_st_model}@{back.json()['version']}"), (back.json(), replicas(proxy))
    deployed = ray.get(client._controller.get_app_configs.remote())[APP].model_dump(exclude_unset=True)
    ours = [d for d in deployed["deployments"] if d["name"] == "LanceDBBAAI"]
    assert ours[0]["user_config"]["models"][ALIAS]["served"] == str(sharp_st_model)  # still a config deploy

    edited = copy.deepcopy(ours[0]["user_config"])  # a changed config file: another model, a newer generation
    entry = edited["models"][ALIAS]
    entry.update(served=str(sharp_plain_model), version=entry["version"] + 1)
    edited["generation"] += 1
    client.deploy_apps(ServeDeploySchema(applications=[
        {**application, "deployments": [{"name": "LanceDBBAAI", "user_config": edited}]}]))
    wait_for(lambda: served_everywhere(proxy, f"{sharp_plain_model}@{entry['version']}"), timeout=300)
    assert serve_ray.RayStore(APP).read()["models"][ALIAS]["served"] == str(sharp_plain_model)  # now the record


def _running(name: str) -> bool:
    status = serve.status().applications.get(name)
    return status is not None and status.status == "RUNNING"


# ------------------------------------------------------------------ the command line


def test_the_command_line_writes_a_serve_config_and_refuses_ray_options_alone(st_model, tmp_path):
    import yaml

    out = tmp_path / "serve.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LANCEDB_BAAI_ADMIN_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "lancedb_baai", "serve", "--ray", "--autoscale", "1:3",
                           "--num-cpus", "0.5", "--embed", f"{ALIAS}={st_model}", "--ray-config", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    application = yaml.safe_load(out.read_text())["applications"][0]
    assert application["import_path"] == "lancedb_baai.serve.ray:build"
    assert application["args"]["autoscale"] == [1, 3] and application["args"]["num_cpus"] == 0.5
    assert application["args"]["models"][0]["alias"] == ALIAS and TOKEN not in out.read_text()
    alone = subprocess.run([sys.executable, "-m", "lancedb_baai", "serve", "--replicas", "2", "--embed", str(st_model)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert alone.returncode == 1 and "only go with --ray" in alone.stderr


def test_lancedb_baai_serve_ray_on_the_cluster(cluster, st_model, tmp_path):
    """`lancedb-baai serve --ray` joins the running cluster (RAY_ADDRESS) and serves until SIGTERM."""
    if APP in serve.status().applications:
        serve.delete(APP)  # its replicas hold the cluster's CPUs
    from lancedb_baai.serve import ray as serve_ray

    serve_ray.forget()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = open(tmp_path / "cli.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lancedb_baai", "serve", "--ray", "--replicas", "2",
                             "--embed", f"{ALIAS}={st_model}", "--dtype", "float32"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def answer():
            assert proc.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
            try:
                response = httpx.post(cluster + "/v1/embeddings", json={"model": ALIAS, "input": TEXTS}, timeout=60)
            except httpx.HTTPError:
                return None
            return response if response.status_code == 200 else None

        response = wait_for(answer, timeout=300, interval=1)
        assert response.headers["x-model-version"] == f"{st_model}@0"
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, np.stack(local(st_model).generate_embeddings(TEXTS)), atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        log.close()
        serve_ray.forget()
    assert serve_ray.APP_NAME not in serve.status().applications  # SIGTERM deleted the application
