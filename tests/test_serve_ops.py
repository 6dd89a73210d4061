"""`lancedb-baai serve` in production: load/unload, one admin action at a time, memory budget, API keys,
Cohere-compatible rerank, /info and the access log. Real server subprocesses, real clients.

One module-scoped server (API key, memory budget, JSON log, state dir) answers every test;
the last test restarts it on the same state dir with the text log format.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction  # noqa: E402

from _serve import Server  # noqa: E402
from _tables import keyed_table  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALIAS = "text-embedding-3-small"  # LanceDB's openai function knows OpenAI's model names only
KEY = "test-api-key-abcdef0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BUDGET_MIB = 150  # MiniLM (87 MiB as float32) fits once beside the tiny models, not twice
TEXTS = ["a python list", "dictionary views", "the with statement", "generators yield values",
         "list comprehensions", "the for statement"]
PASSAGES = ["lists are mutable sequences", "tuples are immutable", "the for statement", "lambda"]


@pytest.fixture(scope="module")
def ops(tmp_path_factory, sharp_st_model, sharp_cross_encoder, zh_model):
    tmp = tmp_path_factory.mktemp("ops")
    tables = [f"{tmp / 'db'}:{name}" for name in _tables_made_by(tmp / "db", {"docs": sharp_st_model, "other": zh_model})]
    srv = Server(["--embed", sharp_st_model, "--embed", f"{ALIAS}={sharp_st_model}", "--rerank", sharp_cross_encoder, "--dtype", "float32",
                  "--state-dir", tmp / "state", "--api-key", KEY, "--memory-budget", f"{BUDGET_MIB}MiB",
                  "--log-format", "json", *(a for t in tables for a in ("--table", t))], tmp / "server.log").start()
    yield srv
    srv.stop()


def _tables_made_by(db, models: dict) -> list[str]:
    """One LanceDB table per name, its vectors made by that model here: what ``--table`` points the server at."""
    for name, model in models.items():
        keyed_table(db, model, TEXTS, name=name)
    return list(models)


def state(server) -> str:
    return (server.log_path.parent / "state" / "state.json").read_text() if \
        (server.log_path.parent / "state" / "state.json").exists() else ""


def served(server) -> dict[str, tuple]:
    return {m["id"]: (m["served"], m["version"]) for m in server.get("/v1/models", headers=AUTH).json()["data"]}


def rss(server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def json_lines(server) -> list[dict]:
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def sigmoid_scores(server, model, query, passages) -> list[float]:
    ranked = server.post("/rerank", {"model": str(model), "query": query, "texts": passages}, headers=AUTH).json()
    return [r["score"] for r in sorted(ranked, key=lambda r: r["index"])]


# ------------------------------------------------------------------ configuration (nothing binds)


def test_beyond_loopback_needs_api_keys_and_sizes_parse():
    from lancedb_baai.serve import ModelOptions, ServeConfig, parse_size

    models = [ModelOptions(kind="embed", name="BAAI/bge-small-en-v1.5")]
    with pytest.raises(ValueError, match="--api-key SECRET .*--allow-no-api-key"):
        ServeConfig(models=models, host="0.0.0.0")
    assert ServeConfig(models=models, host="0.0.0.0", allow_no_api_key=True).api_keys == []
    assert ServeConfig(models=models, host="0.0.0.0", api_keys=["k"]).api_keys == ["k"]
    assert ServeConfig(models=models, memory_budget="6GiB").memory_budget == 6 * 2**30
    assert parse_size("512MB") == 512 * 10**6 and parse_size(1024) == 1024
    with pytest.raises(ValueError, match="6GiB, 512MiB"):
        ServeConfig(models=models, memory_budget="lots")
    with pytest.raises(ValueError, match="not URI:NAME"):
        ServeConfig(models=models, tables=["docs"])
    assert ServeConfig(models=models, tables=["s3://bucket/db:docs"]).tables == ["s3://bucket/db:docs"]


# ------------------------------------------------------------------ API keys


def test_data_routes_need_the_key_health_and_admin_do_not(ops, sharp_st_model, sharp_cross_encoder):
    routes = [("get", "/v1/models", None), ("get", "/info", None), ("get", "/metrics", None),
              ("post", "/v1/embeddings", {"model": str(sharp_st_model), "input": ["x"]}),
              ("post", "/rerank", {"query": "q", "texts": ["a"]}),
              ("post", "/v1/rerank", {"query": "q", "documents": ["a"]}),
              ("post", "/v2/rerank", {"query": "q", "documents": ["a"]})]
    for method, path, body in routes:
        kwargs = {"json": body} if body else {}
        missing = getattr(httpx, method)(ops.url + path, timeout=60, **kwargs)
        wrong = getattr(httpx, method)(ops.url + path, timeout=60, headers={"Authorization": "Bearer nope"}, **kwargs)
        right = getattr(httpx, method)(ops.url + path, timeout=60, headers=AUTH, **kwargs)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"], path
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthorized", path
        assert right.status_code == 200, (path, right.text)
    for path in ("/healthz", "/readyz"):
        assert ops.get(path).status_code == 200
    assert ops.get("/admin/engines", headers=ops.admin()).status_code == 200  # its own token, no API key


def test_openai_clients_with_and_without_the_key(ops, sharp_st_model, tmp_path):
    openai = pytest.importorskip("openai")
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    good = openai.OpenAI(base_url=ops.url + "/v1", api_key=KEY, max_retries=0)
    assert len(good.embeddings.create(model=str(sharp_st_model), input=["x"]).data[0].embedding) == 32
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=ops.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model=str(sharp_st_model), input=["x"])

    registry = get_registry()
    registry.set_var("ops_openai_key", KEY)
    fn = registry.get("openai").create(name=ALIAS, dim=32, base_url=ops.url + "/v1",
                                       api_key="$var:ops_openai_key")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(32) = fn.VectorField()

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    assert table.search("dictionary views").limit(1).to_list()[0]["text"] == "dictionary views"
    assert KEY not in table.schema.metadata[b"embedding_functions"].decode()


def test_url_functions_take_the_key_as_a_var_and_never_store_it(ops, sharp_st_model, sharp_cross_encoder, tmp_path):
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    registry = get_registry()
    with pytest.raises(ValueError, match="Sensitive key 'api_key'"):
        registry.get("local-baai").create(name=str(sharp_st_model), url=ops.url, api_key=KEY)
    with pytest.raises(PermissionError, match=r"401.*api_key="):
        BAAIEmbeddings(name=str(sharp_st_model), url=ops.url + "/").generate_embeddings(["x"])
    registry.set_var("ops_key", KEY)
    fn = registry.get("local-baai").create(name=str(sharp_st_model), url=ops.url, api_key="$var:ops_key")
    assert KEY not in repr(fn) and KEY not in json.dumps(fn.safe_model_dump())

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    db = lancedb.connect(tmp_path / "db")
    db.create_table("docs", schema=Doc).add([{"text": t} for t in TEXTS])
    table = db.open_table("docs")  # the function rebuilt from the metadata resolves the $var again
    stored = table.schema.metadata[b"embedding_functions"].decode()
    assert KEY not in stored and "$var:ops_key" in stored
    rerank = registry.get("local-baai-rerank").create(name=str(sharp_cross_encoder), url=ops.url,
                                                      api_key="$var:ops_key")
    results = table.search("generators").limit(4).rerank(reranker=rerank.reranker()).to_list()
    assert len(results) == 4
    local = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32").score(
        "generators", [r["text"] for r in results])
    np.testing.assert_allclose([r["_relevance_score"] for r in results], local, atol=1e-5)
    assert BAAIEmbeddings(name=str(sharp_st_model), url=ops.url, api_key=KEY).safe_model_dump().get("api_key") is None


# ------------------------------------------------------------------ Cohere-compatible rerank


def test_cohere_clients_rerank_with_sigmoid_scores(ops, sharp_cross_encoder):
    cohere = pytest.importorskip("cohere")
    expected = sigmoid_scores(ops, sharp_cross_encoder, "mutable list", PASSAGES)
    order = list(np.argsort(-np.array(expected), kind="stable"))
    v1 = cohere.Client(api_key=KEY, base_url=ops.url, max_retries=0)
    got = v1.rerank(model=str(sharp_cross_encoder), query="mutable list", documents=PASSAGES, top_n=2,
                    return_documents=True)
    assert [r.index for r in got.results] == order[:2] and got.id
    np.testing.assert_allclose([r.relevance_score for r in got.results], [expected[i] for i in order[:2]], atol=1e-6)
    assert [r.document.text for r in got.results] == [PASSAGES[i] for i in order[:2]]
    v2 = cohere.ClientV2(api_key=KEY, base_url=ops.url, max_retries=0)
    got = v2.rerank(model=str(sharp_cross_encoder), query="mutable list", documents=PASSAGES)
    assert [r.index for r in got.results] == order
    np.testing.assert_allclose([r.relevance_score for r in got.results], [expected[i] for i in order], atol=1e-6)
    objects = ops.post("/v1/rerank", {"query": "mutable list", "documents": [{"text": p} for p in PASSAGES]},
                       headers=AUTH).json()
    assert [r["index"] for r in objects["results"]] == order and "document" not in objects["results"][0]
    bad = ops.post("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}]}, headers=AUTH)
    assert bad.status_code == 422 and "row 0" in bad.json()["error"]["message"]


@pytest.mark.timeout(200)
def test_lancedb_cohere_reranker_reranks_a_table_search(ops, sharp_st_model, sharp_cross_encoder, tmp_path):
    """In a fresh process: the cohere SDK reads CO_API_URL when it is imported."""
    pytest.importorskip("cohere")
    code = f"""
import json, lancedb, lancedb_baai
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector
from lancedb.rerankers import CohereReranker
get_registry().set_var("key", {KEY!r})
fn = get_registry().get("local-baai").create(name={str(sharp_st_model)!r}, url={ops.url!r}, api_key="$var:key")
class Doc(LanceModel):
    text: str = fn.SourceField()
    vector: Vector(32) = fn.VectorField()
table = lancedb.connect({str(tmp_path / "db")!r}).create_table("docs", schema=Doc)
table.add([{{"text": t}} for t in {TEXTS!r}])
reranker = CohereReranker(model_name={str(sharp_cross_encoder)!r}, top_n=3)
rows = table.search("the for statement").limit(6).rerank(reranker=reranker).to_list()
print(json.dumps([[r["text"], r["_relevance_score"]] for r in rows]))
"""
    env = {**os.environ, "CO_API_URL": ops.url, "COHERE_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 3  # top_n
    scores = [s for _, s in rows]
    assert scores == sorted(scores, reverse=True)
    expected = dict(zip(TEXTS, sigmoid_scores(ops, sharp_cross_encoder, "the for statement", TEXTS)))
    np.testing.assert_allclose(scores, [expected[t] for t, _ in rows], atol=1e-6)
    assert [t for t, _ in rows] == sorted(expected, key=expected.get, reverse=True)[:3]


# ------------------------------------------------------------------ /info


def test_info_reports_each_model(ops, sharp_st_model, sharp_cross_encoder):
    from lancedb_baai import __version__

    info = ops.get("/info", headers=AUTH).json()
    assert info["version"] == __version__ and info["max_client_batch_size"] == 512
    models = {m["model_id"]: m for m in info["models"]}
    embed, rerank = models[str(sharp_st_model)], models[str(sharp_cross_encoder)]
    assert (embed["kind"], embed["model_type"], rerank["model_type"]) == ("embed", "embedding", "reranker")
    assert embed["model_sha"].startswith("sha256:") and embed["model_sha"] != rerank["model_sha"]
    assert (embed["model_dtype"], embed["model_device"], embed["max_input_length"]) == ("float32", "cpu", 128)


# ------------------------------------------------------------------ load, unload, memory


def test_load_embed_unload_gives_the_memory_back(ops, minilm, sharp_st_model):
    before_state, before_models = state(ops), served(ops)
    series = {"before_load": rss(ops)}
    loaded = ops.post("/admin/load", {"kind": "embed", "model": str(minilm), "alias": "minilm",
                                      "dtype": "float32"}, headers=ops.admin())
    assert loaded.status_code == 200, loaded.text
    series["after_load"] = rss(ops)
    assert served(ops)["minilm"] == (str(minilm), 0) and json.loads(state(ops))["models"]["minilm"]["options"]
    vectors = ops.post("/v1/embeddings", {"model": "minilm", "input": TEXTS}, headers=AUTH).json()["data"]
    assert len(vectors) == len(TEXTS) and len(vectors[0]["embedding"]) == 384
    memory = ops.engines()["memory"]
    assert memory["budget_bytes"] == BUDGET_MIB * 2**20 and memory["rss_bytes"] > memory["weight_bytes"] > 80e6
    assert any(e["model"] == str(minilm) and e["weight_bytes"] > 80e6 for e in memory["engines"])

    with_minilm = state(ops)
    over = ops.post("/admin/load", {"kind": "embed", "model": str(minilm), "alias": "minilm-128",
                                    "max_length": 128}, headers=ops.admin())
    assert over.status_code == 409, over.text
    error = over.json()["error"]
    assert error["type"] == "over_memory_budget" and error["budget_bytes"] == BUDGET_MIB * 2**20
    assert error["total_bytes"] == error["held_bytes"] + error["new_bytes"] > error["budget_bytes"]
    assert "minilm-128" not in served(ops) and state(ops) == with_minilm

    statuses, stop = [], threading.Event()

    def keep_asking():
        with httpx.Client(base_url=ops.url, headers=AUTH, timeout=60) as client:
            for _ in range(200):  # bounded; the unload stops it long before
                if stop.is_set():
                    return
                statuses.append(client.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS}).status_code)

    threads = [threading.Thread(target=keep_asking) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        unloaded = ops.post("/admin/unload", {"model": "minilm"}, headers=ops.admin())
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert unloaded.status_code == 200, unloaded.text
    assert set(statuses) <= {200, 404} and 200 in statuses, statuses  # drained or refused, never a 500
    gone = ops.post("/v1/embeddings", {"model": "minilm", "input": ["x"]}, headers=AUTH)
    assert gone.status_code == 404 and "'minilm'" in gone.json()["error"]["message"]
    series["after_unload"] = rss(ops)
    assert served(ops) == before_models and json.loads(state(ops))["models"] == json.loads(before_state or
                                                                                          '{"models": {}}')["models"]
    assert not any(e["model"] == str(minilm) for e in ops.engines()["memory"]["engines"])
    print("RSS MiB load/unload:", {k: round(v / 2**20, 1) for k, v in series.items()})
    assert series["after_load"] - series["before_load"] > 50 * 2**20  # the model was big enough to see
    assert abs(series["after_unload"] - series["before_load"]) <= 0.10 * series["before_load"], series


def test_two_concurrent_swaps_one_wins_one_gets_409(ops, sharp_st_model, minilm):
    barrier, answers = threading.Barrier(2), []

    def swap():
        barrier.wait(30)
        answers.append(ops.post("/admin/swap", {"model": str(sharp_st_model), "new_model": str(minilm),
                                                "allow_dims_change": True}, headers=ops.admin()))

    series = {"before_swap": rss(ops)}
    threads = [threading.Thread(target=swap) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    series["after_swap"] = rss(ops)
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    busy = next(a for a in answers if a.status_code == 409).json()["error"]
    print("409 body:", json.dumps(busy))
    assert busy["type"] == "admin_action_running" and busy["running"]["action"] == "swap"
    assert "since" in busy["message"] and busy["running"]["since"]
    assert served(ops)[str(sharp_st_model)] == (str(minilm), 1)
    assert json.loads(state(ops))["models"][str(sharp_st_model)]["served"] == str(minilm)
    swapped = next(a for a in answers if a.status_code == 200).json()["affected_tables"]
    assert [(t["table"].rsplit(":", 1)[1], t["column"]) for t in swapped] == [("docs", "vector")]  # not "other"
    assert {"weights", "dims"} <= set(swapped[0]["differences"])
    response = ops.post("/v1/embeddings", {"model": str(sharp_st_model), "input": ["x"]}, headers=AUTH)
    assert response.headers["x-model-version"] == f"{minilm}@1" and len(response.json()["data"][0]["embedding"]) == 384
    back = ops.post("/admin/rollback", {"model": str(sharp_st_model)}, headers=ops.admin())
    assert back.status_code == 200 and served(ops)[str(sharp_st_model)] == (str(sharp_st_model), 2), back.text
    assert back.json()["affected_tables"] == []  # docs is served by its own model again
    series["after_rollback"] = rss(ops)
    assert not any(e["model"] == str(minilm) for e in ops.engines()["memory"]["engines"])  # released
    print("RSS MiB swap/rollback:", {k: round(v / 2**20, 1) for k, v in series.items()})


def test_failed_loads_name_the_cause_and_change_nothing(ops, tmp_path, st_model, sharp_cross_encoder):
    before_state, before_models = state(ops), served(ops)
    if os.geteuid() != 0:
        unreadable = tmp_path / "locked" / "bge-small-en-v1.5"
        shutil.copytree(st_model, unreadable)
        unreadable.chmod(0)
        cases = [({"kind": "embed", "model": str(unreadable)}, "model_unreadable", str(unreadable))]
    else:  # root reads everything: a missing path stands in
        cases = []
    broken = tmp_path / "broken" / "bge-small-en-v1.5"
    shutil.copytree(st_model, broken)
    (broken / "config.json").write_text("{not json")
    cases += [
        ({"kind": "embed", "model": str(tmp_path / "no-such-model")}, "model_path_not_found",
         str(tmp_path / "no-such-model")),
        ({"kind": "rerank", "model": str(st_model), "alias": "wrong"}, "wrong_model_kind", "cross-encoder"),
        ({"kind": "embed", "model": str(broken)}, "broken_model", "config.json"),
        ({"kind": "embed", "model": str(st_model), "dtype": "float8"}, "invalid_request_error", "float8"),
    ]
    try:
        for body, kind, words in cases:
            response = ops.post("/admin/load", body, headers=ops.admin())
            assert 400 <= response.status_code < 500, response.text
            error = response.json()["error"]
            assert error["type"] == kind and words in error["message"], error
        again = ops.post("/admin/load", {"kind": "rerank", "model": str(sharp_cross_encoder)}, headers=ops.admin())
        assert again.status_code == 409 and again.json()["error"]["type"] == "already_served"
        missing = ops.post("/admin/unload", {"model": "never-loaded"}, headers=ops.admin())
        assert missing.status_code == 404 and "never-loaded" in missing.json()["error"]["message"]
    finally:
        if os.geteuid() != 0:
            unreadable.chmod(0o755)
    assert served(ops) == before_models and state(ops) == before_state


# ------------------------------------------------------------------ logs and counters


def test_access_and_admin_logs_and_counters(ops, sharp_st_model):
    secret_text = "zebra-unicorn-secret-text"
    tagged = ops.post("/v1/embeddings", {"model": str(sharp_st_model), "input": [secret_text, "b"]},
                      headers={**AUTH, "X-Request-Id": "req-ops-1"})
    assert tagged.headers["x-request-id"] == "req-ops-1"
    made_up = ops.get("/v1/models", headers=AUTH).headers["x-request-id"]
    assert len(made_up) == 32 and made_up != "req-ops-1"
    assert ops.get("/healthz", headers={"X-Request-Id": "bad id with spaces"}).headers["x-request-id"] != \
        "bad id with spaces"
    time.sleep(0.5)
    lines = json_lines(ops)
    access = [line for line in lines if line.get("event") == "request"]
    line = next(a for a in access if a["request_id"] == "req-ops-1")
    assert (line["method"], line["route"], line["status"], line["inputs"]) == ("POST", "/v1/embeddings", 200, 2)
    assert line["tokens"] > 2 and line["ms"] > 0 and line["model_version"] == f"{sharp_st_model}@2"
    assert any(a["status"] == 401 for a in access)
    log = ops.log_path.read_text(errors="replace")
    assert secret_text not in log and KEY not in log and "Bearer" not in log

    admin = [(a["action"], a["result"]) for a in lines if a.get("event") == "admin"]
    for wanted in [("load", "ok"), ("load", "over_memory_budget"), ("unload", "ok"), ("swap", "ok"),
                   ("swap", "admin_action_running"), ("rollback", "ok"), ("load", "model_path_not_found")]:
        assert wanted in admin, (wanted, admin)
    assert all(isinstance(a["seconds"], float) and a["model"] for a in lines if a.get("event") == "admin")
    metrics = ops.get("/metrics", headers=AUTH).text
    assert 'lancedb_baai_admin_actions_total{action="load",result="ok"} 1.0' in metrics
    assert 'lancedb_baai_admin_actions_total{action="swap",result="admin_action_running"} 1.0' in metrics


# ------------------------------------------------------------------ restart (last: it replaces the server)


def test_restart_serves_what_load_and_unload_left(ops, sharp_st_model, sharp_cross_encoder, zh_model):
    loaded = ops.post("/admin/load", {"kind": "embed", "model": str(zh_model), "alias": "extra"}, headers=ops.admin())
    assert loaded.status_code == 200, loaded.text
    assert ops.post("/admin/unload", {"model": str(sharp_cross_encoder)}, headers=ops.admin()).status_code == 200
    expected = served(ops)
    assert set(expected) == {str(sharp_st_model), ALIAS, "extra"}
    ops.stop()
    at = ops.args.index("--log-format") + 1
    args = [*ops.args[:at], "text", *ops.args[at + 1:]]  # the same server with the text log format
    again = Server(args, ops.log_path.with_name("restarted.log")).start()
    try:
        assert served(again) == expected
        assert again.post("/rerank", {"query": "q", "texts": ["a"]}, headers=AUTH).status_code == 404
        response = again.post("/v1/embeddings", {"model": "extra", "input": ["x"]},
                              headers={**AUTH, "X-Request-Id": "req-text-1"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "req-text-1"
        time.sleep(0.5)
        line = next(line for line in again.log().splitlines() if "request_id=req-text-1" in line)
        for part in ("method=POST", "route=/v1/embeddings", "status=200", "inputs=1", f"model_version={zh_model}@0"):
            assert part in line, line
        assert KEY not in again.log_path.read_text()
    finally:
        again.stop()
