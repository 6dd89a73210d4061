"""`lancedb-baai serve` as users run it: a real server subprocess, real clients (openai, LanceDB, httpx).

One module-scoped server answers most tests; the restart test runs its own. Swaps happen
last in this file and end with a rollback, so the tests before them see the models as started.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction, testing  # noqa: E402

from _serve import Server, wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALIAS = "text-embedding-3-small"
TEXTS = ["a python list", "dictionary views", "the with statement", "generators yield values"]


@pytest.fixture(scope="module")
def wide_model(models_root):
    """An embedder with 48-d vectors (the others make 32-d ones)."""
    return testing.build_st_embedder(models_root / "wide" / "bge-small-en-v1.5", hidden=48, seed=7)


@pytest.fixture(scope="module")
def server(tmp_path_factory, sharp_st_model, sharp_cross_encoder):
    tmp = tmp_path_factory.mktemp("serve")
    srv = Server(["--embed", sharp_st_model, "--embed", f"{ALIAS}={sharp_st_model}", "--rerank", sharp_cross_encoder,
                  "--dtype", "float32", "--state-dir", tmp / "state", "--max-texts", 64, "--max-chars", 2000],
                 tmp / "server.log").start()
    yield srv
    srv.stop()


def local_embedder(path) -> BAAIEmbeddings:
    return BAAIEmbeddings(name=str(path), dtype="float32", device="cpu")


def embed(server, texts, model, **extra) -> httpx.Response:
    return server.post("/v1/embeddings", {"model": str(model), "input": texts, **extra})


# ------------------------------------------------------------------ OpenAI-compatible clients


def test_openai_client_gets_the_in_process_vectors(server, sharp_st_model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    local = local_embedder(sharp_st_model)
    expected = np.stack(local.generate_embeddings(TEXTS))
    for encoding in ({"encoding_format": "float"}, {}):  # unless told, the client asks for base64 and decodes it
        got = client.embeddings.create(model=str(sharp_st_model), input=TEXTS, **encoding)
        np.testing.assert_allclose(np.array([d.embedding for d in got.data], dtype=np.float32), expected, atol=1e-5)
        assert got.usage.prompt_tokens > len(TEXTS)
    query = client.embeddings.create(model=str(sharp_st_model), input="python lists",
                                      extra_body={"input_type": "query"}, encoding_format="float")
    np.testing.assert_allclose(query.data[0].embedding, local.compute_query_embeddings("python lists")[0], atol=1e-5)
    raw = client.embeddings.with_raw_response.create(model=ALIAS, input="x", encoding_format="float")
    assert raw.headers["x-model-version"].endswith("@0")


def test_lancedb_openai_function_fills_and_searches_a_table(server, sharp_st_model, tmp_path, monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")  # LanceDB refuses a literal api_key; the server needs none
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    fn = get_registry().get("openai").create(name=ALIAS, dim=32, base_url=server.url + "/v1")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    stored = np.stack(table.to_pandas()["vector"].to_list())
    np.testing.assert_allclose(stored, np.stack(local_embedder(sharp_st_model).generate_embeddings(TEXTS)), atol=1e-5)
    assert table.search("dictionary views").limit(1).to_list()[0]["text"] == "dictionary views"


# ------------------------------------------------------------------ rerank, models, health, metrics


def test_rerank_equals_the_in_process_reranker(server, sharp_cross_encoder):
    passages = ["lists are mutable sequences", "tuples are immutable", "the for statement", "lambda"]
    raw = server.post("/rerank", {"query": "mutable list", "texts": passages, "raw_scores": True,
                                  "return_text": True})
    assert raw.status_code == 200 and raw.headers["x-model-version"].endswith("@0")
    local = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32", device="cpu")
    expected = local.score("mutable list", passages)
    ranked = raw.json()
    assert [r["index"] for r in ranked] == list(np.argsort(-np.array(expected), kind="stable"))
    assert all(r["text"] == passages[r["index"]] for r in ranked)
    np.testing.assert_allclose([r["score"] for r in sorted(ranked, key=lambda r: r["index"])], expected, atol=1e-5)
    sigmoid = server.post("/rerank", {"query": "mutable list", "texts": passages}).json()
    normalized = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32", normalize=True).score(
        "mutable list", passages)
    np.testing.assert_allclose([r["score"] for r in sorted(sigmoid, key=lambda r: r["index"])], normalized, atol=1e-6)
    assert "text" not in sigmoid[0]


def test_models_health_readiness_and_metrics(server, sharp_st_model, sharp_cross_encoder):
    models = {m["id"]: m for m in server.get("/v1/models").json()["data"]}
    assert set(models) == {str(sharp_st_model), ALIAS, str(sharp_cross_encoder)}
    assert models[ALIAS]["dims"] == 32 and models[ALIAS]["served"] == str(sharp_st_model)
    assert models[str(sharp_cross_encoder)]["kind"] == "rerank"
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
        response = server.get(path)
        assert response.status_code == 200 and "x-model-version" in response.headers
    metrics = server.get("/metrics").text
    for name in ("lancedb_baai_requests_total", "lancedb_baai_request_seconds_bucket", "lancedb_baai_batch_texts",
                 "lancedb_baai_queue_depth", "lancedb_baai_model_loads_total", "lancedb_baai_model_version",
                 "lancedb_baai_forward_passes_total"):
        assert name in metrics, name
    mapped = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("lancedb_baai_weight_bytes{") and 'memory="mapped"' in line
              and f'model="{sharp_st_model}"' in line and 'backend="torch"' in line]
    assert mapped and mapped[0] > 0, metrics  # torch float32 reads its safetensors through a map


# ------------------------------------------------------------------ micro-batching


def test_concurrent_requests_share_forward_passes(server, sharp_st_model):
    batches = [[f"text {i} of request {r}" * (1 + i % 3) for i in range(8)] for r in range(32)]
    expected = [np.stack(local_embedder(sharp_st_model).generate_embeddings(b)) for b in batches]
    before = {m["id"]: m for m in server.engines()["models"]}[str(sharp_st_model)]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={
                "model": str(sharp_st_model), "input": b, "encoding_format": "float"}) for b in batches))

    responses = asyncio.run(all_at_once())
    for response, want in zip(responses, expected):
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)
    after = {m["id"]: m for m in server.engines()["models"]}[str(sharp_st_model)]
    requests = after["requests"] - before["requests"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert requests == 32 and after["engine_calls"] - before["engine_calls"] < 32
    assert passes < 32, (passes, requests)


# ------------------------------------------------------------------ bad requests


BAD_EMBEDDINGS = [
    ("empty list", {"input": []}, 422, "empty"),
    ("empty string", {"input": ""}, 422, "'input' is an empty string"),
    ("empty string item", {"input": ["ok", ""]}, 422, "input at row 1 is an empty string"),
    ("null input", {"input": None}, 422, "null"),
    ("missing input", {}, 422, "missing"),
    ("non-string item", {"input": ["ok", 3]}, 422, "row 1 is a int"),
    ("null item", {"input": ["ok", None]}, 422, "row 1 is null"),
    ("token ids", {"input": [[1, 2, 3]]}, 422, "not a string"),
    ("not a list", {"input": {"a": 1}}, 422, "string or a list"),
    ("unknown model", {"model": "no-such-model", "input": ["x"]}, 404, "no-such-model"),
    ("too many texts", {"input": ["x"] * 65}, 413, "limit is 64"),
    ("too long a text", {"input": ["x" * 2001]}, 413, "limit is 2000"),
    ("empty query", {"input": [" "], "input_type": "query"}, 422, "query is empty"),
    ("bad input_type", {"input": ["x"], "input_type": "document"}, 422, "input_type"),
    ("bad encoding", {"input": ["x"], "encoding_format": "int8"}, 422, "encoding_format"),
    ("other dimensions", {"input": ["x"], "dimensions": 8}, 422, "32"),
]


@pytest.mark.parametrize("payload,status,words", [c[1:] for c in BAD_EMBEDDINGS], ids=[c[0] for c in BAD_EMBEDDINGS])
def test_bad_embedding_requests_get_4xx_json(server, sharp_st_model, payload, status, words):
    response = server.post("/v1/embeddings", {"model": str(sharp_st_model), **payload})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"] and "x-model-version" in response.headers


def test_other_bad_requests_get_4xx_json(server, sharp_cross_encoder):
    cases = [
        (server.post("/rerank", {"query": "q", "texts": []}), 422, "empty"),
        (server.post("/rerank", {"query": "q", "texts": ["a", ""]}), 422, "texts at row 1 is an empty string"),
        (server.post("/v1/rerank", {"query": "q", "documents": [""]}), 422, "documents at row 0 is an empty string"),
        (server.post("/v2/rerank", {"query": "q", "documents": ["a", {"text": ""}]}), 422,
         "documents at row 1 is an empty string"),
        (server.post("/rerank", {"texts": ["a"]}), 422, "query must be a string"),
        (server.post("/rerank", {"query": "  ", "texts": ["a"]}), 422, "query is empty"),
        (server.post("/rerank", {"query": "q", "texts": ["a"], "model": "nope"}), 404, "nope"),
        (server.post("/rerank", {"query": "q", "texts": ["word " * 300], "truncate": False}), 413, "limit of 128"),
        (server.get("/no/such/route"), 404, "no route"),
        (server.post("/v1/embeddings", content=b"null", headers={"content-type": "application/json"}), 422, "invalid"),
        (server.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 422,
         "invalid"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"], response.text
    assert server.get("/readyz").status_code == 200


def test_admin_routes_need_the_token(server, sharp_st_model, zh_model):
    routes = [("post", "/admin/swap", {"model": str(sharp_st_model), "new_model": str(zh_model)}),
              ("post", "/admin/rollback", {"model": str(sharp_st_model)}), ("get", "/admin/engines", None)]
    for method, path, body in routes:
        kwargs = {"json": body} if body else {}
        missing = getattr(httpx, method)(server.url + path, timeout=30, **kwargs)
        wrong = getattr(httpx, method)(server.url + path, timeout=30, headers={"Authorization": "Bearer nope"},
                                       **kwargs)
        assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]
        assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    assert server.get("/v1/models").json()["data"][0]["version"] == 0  # nothing was swapped


def test_admin_is_off_without_a_token_and_needs_a_long_one_beyond_loopback():
    from lancedb_baai.serve import ModelOptions, ServeConfig

    models = [ModelOptions(kind="embed", name="BAAI/bge-small-en-v1.5")]
    assert not ServeConfig(models=models).admin_enabled
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeConfig(models=models, host="10.1.2.3", admin_token="short")  # validated only: nothing binds
    with pytest.raises(ValueError, match="empty"):
        ServeConfig(models=models, admin_token=" ")


# ------------------------------------------------------------------ url= functions


def test_url_functions_in_a_lancedb_table(server, sharp_st_model, sharp_cross_encoder, tmp_path):
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    fn = get_registry().get("local-baai").create(name=str(sharp_st_model), url=server.url)
    assert pickle.loads(pickle.dumps(fn)) == fn and fn.ndims() == 32

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    local = local_embedder(sharp_st_model)
    np.testing.assert_allclose(np.stack(table.to_pandas()["vector"].to_list()),
                               np.stack(local.generate_embeddings(TEXTS)), atol=1e-5)
    assert json.loads(db.open_table("docs").schema.metadata[b"embedding_functions"])[0]["model"]["url"] == server.url

    rerank = BAAIRerankFunction(name=str(sharp_cross_encoder), url=server.url)
    results = table.search("generators").limit(4).rerank(reranker=rerank.reranker()).to_list()
    local_scores = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32").score(
        "generators", [r["text"] for r in results])
    np.testing.assert_allclose([r["_relevance_score"] for r in results], local_scores, atol=1e-5)
    assert [r["_relevance_score"] for r in results] == sorted(local_scores, reverse=True)


def test_url_functions_take_empty_strings_as_the_local_ones_do(server, sharp_st_model, sharp_cross_encoder):
    """A table may hold empty texts: its url= function embeds them as the local one would.

    Other clients get 422 for an empty string (test_bad_embedding_requests_get_4xx_json);
    the package's own client says it takes them, as the library does.
    """
    texts = ["a python list", ""]
    remote = BAAIEmbeddings(name=str(sharp_st_model), url=server.url).generate_embeddings(texts)
    np.testing.assert_allclose(np.stack(remote), np.stack(local_embedder(sharp_st_model).generate_embeddings(texts)),
                               atol=1e-5)
    remote_scores = BAAIRerankFunction(name=str(sharp_cross_encoder), url=server.url).score("lists", texts)
    local_scores = BAAIRerankFunction(name=str(sharp_cross_encoder), dtype="float32").score("lists", texts)
    np.testing.assert_allclose(remote_scores, local_scores, atol=1e-5)


def test_url_function_refuses_a_model_the_server_does_not_serve(server):
    fn = BAAIEmbeddings(name="BAAI/bge-base-en-v1.5", url=server.url)
    with pytest.raises(ValueError, match=r"does not serve 'BAAI/bge-base-en-v1.5'.*bge-small-en-v1.5"):
        fn.generate_embeddings(["x"])
    with pytest.raises(ValueError, match="as a embed model, not rerank"):
        BAAIRerankFunction(name=ALIAS, url=server.url).score("q", ["a"])


@pytest.mark.timeout(120)
def test_url_function_imports_no_torch(server, sharp_st_model):
    code = ("import sys, lancedb_baai\n"
            f"fn = lancedb_baai.BAAIEmbeddings(name={str(sharp_st_model)!r}, url={server.url!r})\n"
            "v = fn.compute_source_embeddings(['a', 'b'])\n"
            "print(len(v), len(v[0]), sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "32", "[]"]


# ------------------------------------------------------------------ load without a kind


def test_load_without_kind_reads_it_from_the_files(server, plain_model, cross_encoder, tmp_path):
    before = _served(server)
    loads = {"inferred-embedder": plain_model, "inferred-reranker": cross_encoder}
    for alias, model in loads.items():
        response = server.post("/admin/load", {"model": str(model), "alias": alias}, headers=server.admin())
        assert response.status_code == 200, response.text
    try:
        kinds = {m["id"]: m["kind"] for m in server.get("/v1/models").json()["data"]}
        assert (kinds["inferred-embedder"], kinds["inferred-reranker"]) == ("embed", "rerank")
        ranked = server.post("/rerank", {"model": "inferred-reranker", "query": "q", "texts": ["a", "b"]})
        assert ranked.status_code == 200 and len(ranked.json()) == 2
    finally:
        for alias in loads:
            assert server.post("/admin/unload", {"model": alias}, headers=server.admin()).status_code == 200
    unknown = server.post("/admin/load", {"model": "someone/not-here-model"}, headers=server.admin())
    assert unknown.status_code == 422, unknown.text
    message = unknown.json()["error"]["message"]
    assert "'kind' was not sent" in message and 'Send "kind": "embed" or "rerank"' in message
    missing = server.post("/admin/load", {"model": str(tmp_path / "no-such-model")}, headers=server.admin())
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "model_path_not_found", missing.text
    assert _served(server) == before


# ------------------------------------------------------------------ swaps (last: they change what is served)


def _served(server):
    return [(m["id"], m["served"], m["version"], m["dims"]) for m in server.get("/v1/models").json()["data"]]


def test_failed_swaps_change_nothing(server, sharp_st_model, sharp_cross_encoder, wide_model):
    state_file = server.log_path.parent / "state" / "state.json"
    before_state = state_file.read_text() if state_file.exists() else None
    before_models = _served(server)
    vector = embed(server, ["same text"], sharp_st_model).json()["data"][0]["embedding"]
    attempts = [
        ({"model": str(sharp_st_model), "new_model": "/no/such/model"}, 400, "still serving"),
        ({"model": str(sharp_st_model), "new_model": str(sharp_cross_encoder)}, 400, "cross-encoder"),
        ({"model": str(sharp_st_model), "new_model": str(wide_model)}, 409, "48-d"),
        ({"model": str(sharp_st_model), "new_model": str(wide_model), "kind": "rerank"}, 422, "embed model"),
        ({"model": "unknown", "new_model": str(wide_model)}, 404, "unknown"),
    ]
    for body, status, words in attempts:
        response = server.post("/admin/swap", body, headers=server.admin())
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"]
    nothing = server.post("/admin/rollback", {"model": str(sharp_st_model)}, headers=server.admin())
    assert nothing.status_code == 409 and "never swapped" in nothing.json()["error"]["message"]
    assert _served(server) == before_models
    assert (state_file.read_text() if state_file.exists() else None) == before_state
    assert embed(server, ["same text"], sharp_st_model).json()["data"][0]["embedding"] == vector
    loaded = {r["model"] for r in server.engines()["cache"]}
    assert str(wide_model) not in loaded  # the refused candidate was released


def test_swap_and_rollback_under_load_drop_nothing(server, sharp_st_model, zh_model):
    text = "the same text every time"
    expected = {str(p): np.asarray(local_embedder(p).generate_embeddings([text])[0]) for p in (sharp_st_model, zh_model)}
    stop, results, errors = threading.Event(), [], []
    loads = server.engines()["load_count"]

    def load():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(5000):  # bounded; stopped by the event long before
                if stop.is_set():
                    return
                try:
                    r = client.post("/v1/embeddings", json={"model": str(sharp_st_model), "input": [text],
                                                            "encoding_format": "float"})
                    results.append((r.status_code, r.headers.get("x-model-version"), r.json()))
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) > 10, timeout=30)
        swapped = server.post("/admin/swap", {"model": str(sharp_st_model), "new_model": str(zh_model)},
                              headers=server.admin())
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["served"] == str(zh_model) and swapped.json()["version"] == 1
        mark = len(results)
        wait_for(lambda: len(results) > mark + 10, timeout=30)
        back = server.post("/admin/rollback", {"model": str(sharp_st_model)}, headers=server.admin())
        assert back.status_code == 200 and back.json()["served"] == str(sharp_st_model), back.text
        mark = len(results)
        wait_for(lambda: len(results) > mark + 10, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and all(status == 200 for status, _, _ in results)
    versions = {}
    for _, header, body in results:
        served, version = header.rsplit("@", 1)
        np.testing.assert_allclose(body["data"][0]["embedding"], expected[served], atol=1e-5)
        versions.setdefault(int(version), set()).add(served)
    assert versions == {0: {str(sharp_st_model)}, 1: {str(zh_model)}, 2: {str(sharp_st_model)}}
    engines = server.engines()
    assert engines["load_count"] == loads + 1  # zh once; the rollback reloads nothing
    assert "still held by requests" not in server.log()  # the swapped-out engine was let go at once
    assert json.loads((server.log_path.parent / "state" / "state.json").read_text())["models"][str(sharp_st_model)] == \
        {"served": str(sharp_st_model), "version": 2, "history": []}


def test_restart_after_a_swap_serves_the_swapped_model(server, sharp_st_model, zh_model):
    """Last in the file: it stops the module's server and starts it again on the same state dir."""
    swapped = server.post("/admin/swap", {"model": str(sharp_st_model), "new_model": str(zh_model)},
                          headers=server.admin())
    assert swapped.status_code == 200 and swapped.json()["version"] == 3, swapped.text
    server.stop()
    assert "Application shutdown complete" in server.log()  # SIGTERM drained, then the engines were released
    again = Server(server.args, server.log_path.with_name("restarted.log")).start()
    try:
        models = {m["id"]: m for m in again.get("/v1/models").json()["data"]}
        model = models[str(sharp_st_model)]
        assert (model["served"], model["version"]) == (str(zh_model), 3)
        assert models[ALIAS]["served"] == str(sharp_st_model)  # never swapped: the command line's model
        response = embed(again, ["after the restart"], sharp_st_model, encoding_format="float")
        assert response.headers["x-model-version"] == f"{zh_model}@3"
        np.testing.assert_allclose(response.json()["data"][0]["embedding"],
                                   local_embedder(zh_model).generate_embeddings(["after the restart"])[0], atol=1e-5)
        assert again.engines()["load_count"] == 3  # zh, the alias's model and the reranker: not the swapped-out one
        back = again.post("/admin/rollback", {"model": str(sharp_st_model)}, headers=again.admin())
        assert back.status_code == 200 and back.json()["served"] == str(sharp_st_model)  # history survives too
    finally:
        again.stop()
