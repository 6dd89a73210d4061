"""Run with: .venv/bin/python benchmarks/serve.py [--quick] [--duration 60] [--clients 1 8 32] [--ray] [--plot results/serve.png]

Load test of `lancedb-baai serve` on the packaged all-MiniLM-L6-v2: an async httpx load
generator keeps 1, 8 and 32 clients busy for ``--duration`` seconds each, every request
8 paragraphs of Python's reference docs. Contenders, each a server subprocess on a free
127.0.0.1 port, run in rotation at each client count:

- ``micro-batching``: `lancedb-baai serve` (concurrent requests merged into shared passes);
- ``no micro-batching``: the same server with ``--no-micro-batching`` (one request per engine call);
- ``naive``: the pattern of a hand-written FastAPI server, a sync route calling the function
  object directly from the thread pool (one engine call per request, threads competing);
- ``infinity``: infinity-emb serving the same folder, when ``--infinity PYTHON`` names an
  interpreter that has it installed.

The engine's own in-process rate (``encode`` of the same texts, batches of 32, no HTTP) is
the mark, measured before each client count so that it shares the machine's conditions.
After the rotation, the micro-batching server runs once more at the largest client count
while its model is swapped (to a copy of the same weights in another folder, so a real load
happens) and rolled back; that run's failed requests and latency are reported in a row of
their own. The load generator shares the machine with
the servers, as a client on the same host would.

With ``--ray``, the contenders are the micro-batching server and the same service on Ray Serve
(:mod:`lancedb_baai.serve.ray`, a local Ray cluster started here) with 1 and with 2 replicas,
the host's cores shared out over each application's replicas (threads per replica = its CPUs).
Each of the three then runs the swap + rollback row. For each action it reports when every
replica served the change (the last replica's acknowledgement, after the request was sent),
the seconds each replica took to load the model during it (as each reports them), the time
the model takes to load in an idle process, and when the action answered: after the
acknowledgements and after the old engine's queued requests were answered and its memory given
back. Before the runs each
swapped server is swapped to the copy and back once (that first swap exports and gates the copy
for the backend the server runs; its seconds are reported apart), and the backend each runs
("auto") is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from pydantic import BaseModel

TOKEN = "benchmark-admin-token-0123456789"
TEXTS_PER_REQUEST = 8
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None, help="seconds per point (default 60; --quick 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=None, help="client counts (default 1 8 32)")
    parser.add_argument("--infinity", default=None, help="python of a venv with infinity-emb, to add it")
    parser.add_argument("--ray", action="store_true", help="the single-host server beside Ray Serve, 1 and 2 replicas")
    parser.add_argument("--naive-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)


def naive_server(port: int, model: str) -> None:
    """The naive baseline: a sync FastAPI route calling the function object per request."""
    import uvicorn
    from fastapi import FastAPI

    import lancedb_baai

    fn = lancedb_baai.BAAIEmbeddings(name=model)
    lancedb_baai.preload(model)
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embed(body: NaiveBody) -> dict:
        return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(fn.generate_embeddings(body.input))]}

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class NaiveBody(BaseModel):
    input: list[str]
    model: str | None = None


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Contender:
    def __init__(self, name: str, argv: list[str], model_id: str, log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.model_id, self.log = name, argv, model_id, log
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self, timeout: float = 300, path: str = "/readyz") -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RayContender:
    """``lancedb_baai.serve.ray`` with ``replicas`` replicas, one application on the local cluster's proxy."""

    def __init__(self, name: str, model: str, replicas: int, proxy: str) -> None:
        self.name, self.model_id, self.replicas = name, model, replicas
        self.app = f"bench-{replicas}-replica"
        self.url = f"{proxy}/{self.app}"

    def start(self) -> None:
        from ray import serve

        from lancedb_baai.serve import ModelOptions, ServeConfig
        from lancedb_baai.serve import ray as serve_ray

        serve_ray.forget(self.app)  # start from the model given, not an earlier run's record
        config = ServeConfig(models=[ModelOptions(kind="embed", name=self.model_id)], admin_token=TOKEN)
        cpus = max(1.0, (os.cpu_count() or 1) // self.replicas)
        serve.run(serve_ray.app(config, replicas=self.replicas, num_cpus=cpus, name=self.app),
                  name=self.app, route_prefix=f"/{self.app}")

    def wait_ready(self, timeout: float = 300, path: str = "/readyz") -> None:
        pass  # serve.run returned once every replica was running

    def stop(self) -> None:
        from ray import serve

        from lancedb_baai.serve import ray as serve_ray

        serve.delete(self.app)
        serve_ray.forget(self.app)


def start_ray() -> str:
    """A local Ray cluster and Serve's proxy on a free port; its URL. Each application's replicas
    take the host's cores, and the applications run in turn, so the cluster counts twice the cores."""
    import ray
    from ray import serve

    ray.init(num_cpus=2 * (os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="serve")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def stop_ray() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def load_seconds(model: str) -> float:
    """Seconds to load ``model`` warm in this process (what a swap must pay on each replica)."""
    import lancedb_baai

    start = time.perf_counter()
    lancedb_baai.BAAIEmbeddings(name=model).engine().encode(["warm-up"])
    seconds = time.perf_counter() - start
    lancedb_baai.release()
    return seconds


def serve_argv(model: str, state_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lancedb_baai", "serve", "--embed", model, "--host", "127.0.0.1",
            "--port", "{port}", "--state-dir", str(state_dir), *extra]


# ---------------------------------------------------------------- load


async def load(url: str, model: str, clients: int, duration: float, requests: list[list[str]],
               events: list[tuple[float, Any]] = ()) -> dict[str, Any]:
    """``clients`` tasks posting back to back for ``duration`` s; ``events`` run at (fraction, coroutine fn)."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    versions: set[str] = set()
    stop_at = time.perf_counter() + duration

    async def client(i: int, http: httpx.AsyncClient) -> None:
        n = i
        while time.perf_counter() < stop_at:
            texts = requests[n % len(requests)]
            n += clients
            start = time.perf_counter()
            try:
                r = await http.post("/v1/embeddings", json={"model": model, "input": texts})
                if r.status_code != 200 or len(r.json()["data"]) != len(texts):
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                versions.add(r.headers.get("x-model-version", ""))
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - start)

    async def timeline() -> list[Any]:
        """The events in order, each at its point in the run but never before the last one ended
        (the server takes one admin action per model at a time and answers a second with 409)."""
        done = []
        for fraction, action in events:
            await asyncio.sleep(max(0.0, begin + duration * fraction - time.perf_counter()))
            done.append(await action())
        return done

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        begin = time.perf_counter()
        results = await asyncio.gather(*(client(i, http) for i in range(clients)), timeline())
        elapsed = time.perf_counter() - begin
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:3],
            "requests_per_s": len(latencies) / elapsed, "texts_per_s": len(latencies) * TEXTS_PER_REQUEST / elapsed,
            **_percentiles(latencies), "versions": sorted(versions), "events": results[clients]}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        value = latencies[0] * 1000 if latencies else float("nan")
        return {"p50_ms": value, "p95_ms": value, "p99_ms": value}
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "p99_ms": q[98] * 1000}


def admin_action(url: str, path: str, body: dict[str, Any]):
    async def act() -> dict[str, Any]:
        import httpx

        began, start = time.time(), time.perf_counter()
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            r = await http.post(path, json=body, headers=ADMIN)
            seconds = round(time.perf_counter() - start, 2)
            workers = (await http.get("/admin/engines", headers=ADMIN)).json()["workers"]
        generation = r.json().get("generation", 0) if r.status_code == 200 else None
        applied = [w for w in workers if generation is not None and w["generation"] >= generation]
        loads = [w["load_s"][body["model"]] for w in applied if body["model"] in w["load_s"]]
        # the last acknowledgement: when every replica served the change (the answer comes after the
        # old engine's queued requests are answered and its memory is given back)
        reached = round(max(w["time"] for w in applied) - began, 2) if applied else None
        return {"action": path, "status": r.status_code, "seconds": seconds, "reached_every_replica_s": reached,
                "replica_load_s": sorted(loads)}

    return act


def engine_of(url: str, model: str) -> str | None:
    """What the server runs ``model`` on ("openvino bfloat16"), from its admin route (None without one)."""
    import httpx

    r = httpx.get(url + "/admin/engines", headers=ADMIN, timeout=60)
    if r.status_code != 200:
        return None
    found = [f"{c['backend']} {c['dtype']}" for c in r.json()["cache"] if c.get("served", c["model"]) == model]
    return found[0] if found else None


def prepare_swap(c: Any, copy: str) -> dict[str, Any]:
    """Swap ``c`` to ``copy`` and back once before the load: the copy's export and gate for the backend
    ``c`` runs happen here, so the swap under load measures loading it and reaching every replica."""
    events = [asyncio.run(admin_action(c.url, path, body)()) for path, body in (
        ("/admin/swap", {"model": c.model_id, "new_model": copy}), ("/admin/rollback", {"model": c.model_id}))]
    if any(e["status"] != 200 for e in events):
        raise RuntimeError(f"{c.name}: the swap before the runs failed: {events}")
    return {"server": c.name, "first_swap_s": events[0]["seconds"], "first_rollback_s": events[1]["seconds"]}


def engine_rate(model: str, requests: list[list[str]], seconds: float) -> float:
    """Texts/s of the engine itself: ``encode`` in batches of 32, in this process, no HTTP."""
    import lancedb_baai

    engine = lancedb_baai.BAAIEmbeddings(name=model).engine()
    texts = [t for r in requests for t in r]
    engine.encode(texts[:32])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(texts), 256):
            engine.encode(texts[i:i + 256], batch_size=32)
            done += len(texts[i:i + 256])
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------- main


def main() -> int:
    args = _common.parse_args("serve", __doc__, add_args)
    if args.naive_server is not None:
        naive_server(args.naive_server, args.model)
        return 0
    duration = args.duration or (2.0 if args.quick else 60.0)
    client_counts = args.clients or ([1, 8] if args.quick else [1, 8, 32])
    model = _common.minilm_path()
    paragraphs = _common.corpus(limit=64 if args.quick else 512)
    requests = [paragraphs[i:i + TEXTS_PER_REQUEST] for i in range(0, len(paragraphs) - TEXTS_PER_REQUEST + 1,
                                                                    TEXTS_PER_REQUEST)]
    work = Path(tempfile.mkdtemp(prefix="lancedb-baai-bench-serve-"))
    copy = str(shutil.copytree(model, work / "models" / "all-MiniLM-L6-v2-copy"))
    contenders: list[Any] = [
        Contender("micro-batching", serve_argv(model, work / "state-mb"), model, work / "mb.log",
                  {"LANCEDB_BAAI_ADMIN_TOKEN": TOKEN}),
    ]
    if args.ray:
        proxy = start_ray()
        contenders += [RayContender("ray serve, 1 replica", model, 1, proxy),
                       RayContender("ray serve, 2 replicas", model, 2, proxy)]
    else:
        contenders += [
            Contender("no micro-batching", serve_argv(model, work / "state-off", "--no-micro-batching"), model,
                      work / "off.log"),
            Contender("naive (thread pool)", [sys.executable, __file__, "--naive-server", "{port}", "--model",
                                              model], model, work / "naive.log"),
        ]
    if args.infinity:
        contenders.append(Contender("infinity-emb", [args.infinity, "-m", "infinity_emb.cli", "v2", "--model-id",
                                                     model, "--port", "{port}", "--host", "127.0.0.1"],
                                    model, work / "infinity.log"))
    print(f"starting {len(contenders)} servers (logs in {work}) ...", flush=True)
    try:
        for c in contenders:
            c.start()
        for c in contenders:
            c.wait_ready(path="/health" if c.name == "infinity-emb" else "/readyz")
        swapped = contenders if args.ray else contenders[:1]
        engines = {c.name: engine_of(c.url, c.model_id) for c in swapped}
        first_swaps = [prepare_swap(c, copy) for c in swapped]
        rows = run_points(contenders, client_counts, duration, requests, copy,
                          lambda: engine_rate(model, requests, min(duration, 10.0)),
                          swapped=swapped)
        in_process = statistics.median(r["engine_texts_per_s"] for r in rows)
    finally:
        for c in contenders:
            c.stop()
        if args.ray:
            stop_ray()
    swap_rows = [r for r in rows if r.get("events")]
    load_s = load_seconds(copy)
    print_results(rows, in_process, swap_rows, load_s, engines, first_swaps)
    _common.write_json(args.out, {
        "machine": _common.machine_info(**engines), "quick": args.quick, "first_swaps": first_swaps,
        "duration_s": duration, "texts_per_request": TEXTS_PER_REQUEST, "model": model,
        "engine_in_process_texts_per_s": in_process, "results": rows, "model_load_s": load_s,
        "swap_during_load": {"errors": swap_rows[0]["errors"], "events": swap_rows[0]["events"],
                             "versions": swap_rows[0]["versions"], "p95_ms": swap_rows[0]["p95_ms"],
                             "p99_ms": swap_rows[0]["p99_ms"]},
        "swaps_during_load": [{"server": r["server"], "clients": r["clients"], "errors": r["errors"],
                               "events": r["events"], "versions": r["versions"], "p50_ms": r["p50_ms"],
                               "p99_ms": r["p99_ms"]} for r in swap_rows],
        "infinity": "measured" if args.infinity else "not measured: pass --infinity PYTHON of a venv with infinity-emb"})
    _common.write_plot(args.plot, "lancedb-baai serve, texts/s (all-MiniLM-L6-v2, 8 texts per request)", [
        (f"texts/s at {n} clients", [r["server"] for r in rows if r["clients"] == n] + ["engine in process"],
         [r["texts_per_s"] for r in rows if r["clients"] == n] + [in_process]) for n in client_counts])
    return 0


def run_points(contenders: list[Any], client_counts: list[int], duration: float,
               requests: list[list[str]], copy: str, mark: Callable[[], float],
               swapped: list[Any]) -> list[dict[str, Any]]:
    """Each client count with the contenders in rotation, after measuring the engine's own rate
    (so the mark shares the conditions of the rows beside it); then, at the largest count, each
    of ``swapped`` again with a swap and a rollback during the run (rows of their own, so the
    plain rows stay comparable)."""
    rows = []
    for clients in client_counts:
        in_process = mark()
        print(f"engine in process: {in_process:.1f} texts/s", flush=True)
        for c in contenders:
            rows.append(run_point(c, c.name, clients, duration, requests, in_process, []))
    for c in swapped:
        events = [(1 / 3, admin_action(c.url, "/admin/swap", {"model": c.model_id, "new_model": copy})),
                  (2 / 3, admin_action(c.url, "/admin/rollback", {"model": c.model_id}))]
        rows.append(run_point(c, f"{c.name}, swap + rollback", max(client_counts), duration, requests,
                              in_process, events))
    return rows


def run_point(c: Any, label: str, clients: int, duration: float, requests: list[list[str]],
              in_process: float, events: list[Any]) -> dict[str, Any]:
    print(f"  {label}: {clients} clients for {duration:g}s ...", flush=True)
    result = asyncio.run(load(c.url, c.model_id, clients, duration, requests, events))
    return {"server": label, "clients": clients, **result, "engine_texts_per_s": in_process,
            "vs_engine": result["texts_per_s"] / in_process}


def print_results(rows: list[dict[str, Any]], in_process: float, swap_rows: list[dict[str, Any]],
                  load_s: float, engines: dict[str, str | None], first_swaps: list[dict[str, Any]]) -> None:
    _common.print_table(f"\nserve: texts/s and latency (engine in process: {in_process:.1f} texts/s)", rows, [
        ("server", "server", ""), ("clients", "clients", ""), ("requests_per_s", "req/s", ".1f"),
        ("texts_per_s", "texts/s", ".1f"), ("vs_engine", "x engine", ".2f"), ("p50_ms", "p50 ms", ".0f"),
        ("p95_ms", "p95 ms", ".0f"), ("p99_ms", "p99 ms", ".0f"), ("errors", "errors", "")])
    print(f"model load in one process: {load_s:.2f} s; engines: {engines}", flush=True)
    for first in first_swaps:
        print(f"before the runs, {first['server']}: first swap to the copy (its export and gate included) "
              f"{first['first_swap_s']:.2f} s, rollback {first['first_rollback_s']:.2f} s", flush=True)
    for row in swap_rows:
        actions = ", ".join(f"{e['action'].rsplit('/', 1)[1]} {e['status']}, every replica on it after "
                            f"{e['reached_every_replica_s']} s (replicas loaded in {e['replica_load_s']} s), "
                            f"answered in {e['seconds']:.2f} s" for e in row["events"])
        print(f"swap + rollback during the {row['clients']}-client run of {row['server'].split(',')[0]}: "
              f"{row['errors']} failed requests; {actions}; versions seen {row['versions']}", flush=True)


if __name__ == "__main__":
    _common.run_main(main)
