"""Run with: .venv/bin/python benchmarks/memory.py [--quick] [--workers 1,2,4] [--ways ...] [--backends ...]

One copy of the weights per host: the memory N worker processes take for one model.

For each number of workers N, each way users start them (a ``multiprocessing`` spawn
pool, ``ProcessPoolExecutor``, N Python processes started by hand, preload + fork,
``lancedb-baai serve --workers N``, N Ray actors on a local cluster) and
each backend, N workers each create ``local-baai`` on the model and embed texts; while
they are alive their PSS (proportional set size: a page shared by k processes counts 1/k
in each, so the sum over processes counts it once) is read from
``/proc/<pid>/smaps_rollup``. The memory attributable to the model is that total minus
the same processes on a tiny model of the same backend (imports, runtime and Python
objects cancel out). The rows of one N run interleaved (model, tiny, model, tiny...).

Also per worker: seconds from creating the function to the first vector (the export
already on disk: a new worker on a host that already holds the model), texts/s, and the
engine's own report (``weights_mapped_bytes`` / ``weights_private_bytes``). A
"private" row runs the same backend with its weights copied into each process (torch:
the parameters cloned; onnx: the weights pre-packed in the process), the way they were
held before, for the throughput and first-vector comparison.

Models: the packaged all-MiniLM-L6-v2 and a random bge-large-shaped model (24 layers,
hidden 1024, 335M parameters, 1.3 GB in float32; random weights are fine for memory).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _common

WAYS = ("spawn", "executor", "processes", "fork", "serve", "ray")
TEXTS = 32


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default=None, help="numbers of workers, comma-separated (default 1,2,4)")
    parser.add_argument("--ways", default=None, help=f"comma-separated, of {','.join(WAYS)} (default all)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backend:dtype (default torch:float32,torch:bfloat16 where native, "
                             "onnx:float32,openvino:auto)")
    parser.add_argument("--requests", type=int, default=None,
                        help="calls of one short query per worker on the fork and serve ways, so pages are shown to "
                             "stay shared in use (default 1000; quick 50)")
    parser.add_argument("--models", default=None,
                        help="comma-separated: minilm, large, or model directories (default minilm,large)")
    parser.add_argument("--model-dir", type=Path, default=_common.RESULTS_DIR / "models",
                        help="where the random bge-large-shaped model is built once (default: %(default)s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fork-master", default=None, help=argparse.SUPPRESS)


# ---------------------------------------------------------------- what one worker does


def measure_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Create the function, embed, and report timings and the engine's weight memory (runs in the worker)."""
    os.environ.setdefault("LANCEDB_BAAI_THREADS", str(spec.get("threads", 1)))
    from lancedb.embeddings import get_registry

    import lancedb_baai

    if spec.get("private"):
        _hold_privately(spec["backend"])
    texts = _common.corpus(spec.get("texts", TEXTS))
    start = time.perf_counter()
    function = get_registry().get("local-baai").create(name=spec["model"], backend=spec["backend"],
                                                       **({} if spec["dtype"] == "auto" else {"dtype": spec["dtype"]}))
    function.compute_source_embeddings(texts[:1])
    first = time.perf_counter() - start
    if spec.get("private"):
        _copy_torch_weights()
    start = time.perf_counter()
    function.compute_source_embeddings(texts)
    rate = len(texts) / (time.perf_counter() - start)
    queries = _queries(texts)
    for i in range(spec.get("requests", 0)):  # pages must stay shared under use, not only at start
        function.compute_source_embeddings([queries[i % len(queries)]])
    record = lancedb_baai.cache_info()[0]
    return {"pid": os.getpid(), "first_s": first, "texts_per_s": rate, "dtype": record["dtype"],
            **{k: v for k, v in record.items() if k.startswith(("weights_", "shared_weights"))}}


def _queries(texts: list[str]) -> list[str]:
    """What a served worker mostly gets: short queries (a paragraph's first words), one per call."""
    return [" ".join(text.split()[:12]) for text in texts]


def _hold_privately(backend: str) -> None:
    """Make this worker hold its weights the way it did before they were mapped."""
    if backend == "onnx":  # no pre-packed copy: ONNX Runtime pre-packs the weights in this process
        from lancedb_baai.runtimes import export, onnx

        onnx.OnnxRuntime.prepare = export.ExportRuntime.prepare
        onnx.packed_dir = lambda directory: directory / "not-packed"


def _copy_torch_weights() -> None:
    from lancedb_baai.engines.cache import CACHE

    for _, engine in CACHE.engines():
        module = getattr(engine.session, "module", None)
        if module is not None:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()


# ---------------------------------------------------------------- the ways to start N workers


def pss(pid: int) -> int:
    """The proportional set size of process ``pid`` in bytes."""
    from lancedb_baai.runtimes.memory import process_bytes

    total = process_bytes("Pss", pid)
    if not total:
        raise RuntimeError(f"no Pss for process {pid} (has it ended?)")
    return total


_queue: Any = None
_release: Any = None


def _init(queue: Any, release: Any) -> None:
    global _queue, _release
    _queue, _release = queue, release


def _task(spec: dict[str, Any]) -> None:
    _queue.put(measure_worker(spec))
    _release.wait(600)


def _process(spec: dict[str, Any], queue: Any, release: Any) -> None:
    _init(queue, release)
    _task(spec)


def run_way(way: str, spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """Start ``workers`` workers the way ``way`` does, measure them while alive, stop them."""
    if way == "serve":
        return _serve_way(spec, workers)
    if way == "ray":
        return _ray_way(spec, workers)
    if way in ("spawn", "executor"):
        ctx = multiprocessing.get_context("spawn")
        queue, release = ctx.Queue(), ctx.Event()
        if way == "spawn":
            procs = [ctx.Process(target=_process, args=(spec, queue, release)) for _ in range(workers)]
            for p in procs:
                p.start()
            stop = lambda: [p.join(60) for p in procs]  # noqa: E731
        else:
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(queue, release))
            for _ in range(workers):
                pool.submit(_task, spec)
            stop = lambda: pool.shutdown(wait=True)  # noqa: E731
        results = [queue.get(timeout=1800) for _ in range(workers)]
        total = sum(pss(r["pid"]) for r in results)
        release.set()
        stop()
        return {"results": results, "pss": total}
    command = [sys.executable, __file__, "--worker" if way == "processes" else "--fork-master", json.dumps(spec)]
    if way == "processes":
        procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(workers)]
        results = [json.loads(p.stdout.readline()) for p in procs]
        total = sum(pss(r["pid"]) for r in results)
    else:
        command[-1] = json.dumps({**spec, "workers": workers})
        procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)]
        results = json.loads(procs[0].stdout.readline())
        total = pss(procs[0].pid) + sum(pss(r["pid"]) for r in results)
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(120)
    return {"results": results, "pss": total}


def _serve_way(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """``lancedb-baai serve --workers N``: the gunicorn master and its workers, after requests reach them all."""
    import tempfile

    import httpx
    import psutil
    import serve as serve_benchmark

    state = Path(tempfile.mkdtemp(prefix="memory-serve-"))
    dtype = [] if spec["dtype"] == "auto" else ["--dtype", spec["dtype"]]
    server = serve_benchmark.Contender(
        "serve", serve_benchmark.serve_argv(spec["model"], state, "--backend", spec["backend"], *dtype,
                                            "--workers", str(workers), "--threads", "1"),
        spec["model"], state / "server.log")
    server.start()
    try:
        server.wait_ready(timeout=1800)
        model = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        texts = _common.corpus(TEXTS)
        queries = _queries(texts)
        inputs = [texts[i % 4::4] for i in range(8 * workers)]  # batches of paragraphs reach every worker
        inputs += [[queries[i % len(queries)]] for i in range(spec.get("requests", 0) * workers)]
        start = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=300) as client:  # one connection pool, as a service's client
            for batch in inputs:
                client.post("/v1/embeddings", json={"model": model, "input": batch}).raise_for_status()
        seconds = time.perf_counter() - start
        processes = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
        total = sum(pss(p.pid) for p in processes)
        results = [{"pid": p.pid, "first_s": None, "texts_per_s": sum(map(len, inputs)) / seconds / workers,
                    "dtype": spec["dtype"]} for p in processes[1:]]
    finally:
        server.stop()
    return {"results": results, "pss": total}


def _ray_way(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """N Ray actors on a local cluster (how Ray Data's ``map_batches`` runs a model on one node)."""
    import ray

    folder = str(Path(__file__).resolve().parent)  # the actors import this script's helpers
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": folder}})
    try:
        actor = ray.remote(num_cpus=1)(_RayWorker)
        actors = [actor.remote() for _ in range(workers)]
        results = ray.get([a.measure.remote(spec) for a in actors])
        total = sum(pss(r["pid"]) for r in results)
    finally:
        ray.shutdown()
    return {"results": results, "pss": total}


class _RayWorker:
    def measure(self, spec: dict[str, Any]) -> dict[str, Any]:
        return measure_worker(spec)


def _worker_main(spec: dict[str, Any]) -> None:
    print(json.dumps(measure_worker(spec)), flush=True)
    sys.stdin.readline()


def _fork_master_main(spec: dict[str, Any], workers: int) -> None:
    """Preload the model, then fork the workers (what gunicorn --preload and lancedb_baai.preload do)."""
    os.environ.setdefault("LANCEDB_BAAI_THREADS", "1")
    import lancedb_baai

    lancedb_baai.preload(spec["model"], backend=spec["backend"],
                         **({} if spec["dtype"] == "auto" else {"dtype": spec["dtype"]}))
    ctx = multiprocessing.get_context("fork")
    queue, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_process, args=(spec, queue, release)) for _ in range(workers)]
    for p in procs:
        p.start()
    print(json.dumps([queue.get(timeout=1800) for _ in range(workers)]), flush=True)
    sys.stdin.readline()
    release.set()
    for p in procs:
        p.join(60)


# ---------------------------------------------------------------- models


def _model(name: str, directory: Path) -> str:
    """``minilm`` (the packaged one), ``large`` (random, bge-large-shaped) or a model directory."""
    if name == "minilm":
        return _common.minilm_path()
    return large_model(directory) if name == "large" else str(Path(name).resolve())


def large_model(directory: Path) -> str:
    """A random bge-large-shaped embedder (built once in ``directory``)."""
    return _random_bert(directory / "bge-large-shaped", hidden=1024, layers=24, vocab=30522)


def _random_bert(directory: Path, hidden: int, layers: int, vocab: int | None = None) -> str:
    if not (directory / "model.safetensors").is_file():
        import torch
        import transformers

        from lancedb_baai.testing import build_st_embedder

        build_st_embedder(directory, hidden=hidden, layers=layers, max_length=512)
        torch.manual_seed(0)
        config = transformers.BertConfig.from_pretrained(directory)
        config.update({"num_attention_heads": max(1, hidden // 64), "intermediate_size": hidden * 4,
                       "vocab_size": vocab or config.vocab_size})
        transformers.BertModel(config).eval().save_pretrained(directory)
    return str(directory)


# ---------------------------------------------------------------- the run


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _mib(count: float | None) -> float | None:
    return None if count is None else count / 2**20


def _backends(spec: str | None) -> list[tuple[str, str]]:
    if spec:
        return [tuple(item.split(":", 1)) if ":" in item else (item, "auto") for item in spec.split(",")]
    from lancedb_baai.runtimes.device import cpu_bf16_report

    pairs = [("torch", "float32")] + ([("torch", "bfloat16")] if cpu_bf16_report().use_bf16 else [])
    return pairs + [("onnx", "float32"), ("openvino", "auto")]


def main() -> int:
    args = _common.parse_args("memory", __doc__, _options)
    if args.worker:
        _worker_main(json.loads(args.worker))
        return 0
    if args.fork_master:
        spec = json.loads(args.fork_master)
        _fork_master_main(spec, spec["workers"])
        return 0
    quick = args.quick
    counts = [int(n) for n in (args.workers or ("2" if quick else "1,2,4")).split(",")]
    ways = (args.ways or ("spawn,fork" if quick else ",".join(WAYS))).split(",")
    backends = _backends(args.backends or ("torch:float32,onnx:float32" if quick else None))
    tiny = _random_bert(args.model_dir / "tiny", hidden=32, layers=1)
    requests = args.requests if args.requests is not None else (50 if quick else 1000)
    if quick:
        models = {"small": _random_bert(args.model_dir / "small", hidden=256, layers=4)}
    else:
        chosen = (args.models or "minilm,large").split(",")
        models = {Path(name).name: _model(name, args.model_dir) for name in chosen}
    rows: list[dict[str, Any]] = []
    for name, path in models.items():
        weights = _weights_bytes(path)
        for backend, dtype in backends:
            _prepare(path, backend, dtype)
            _prepare(tiny, backend, dtype)
        for way in ways:  # every backend of one way before the next way: a cut-short run has them side by side
            for workers in counts:
                for backend, dtype in backends:
                    for row in _row(name, path, tiny, weights, backend, dtype, way, workers, requests):
                        rows.append(row)
                        print("  " + json.dumps({k: v for k, v in row.items()}, default=str), flush=True)
                        _write(args, rows)  # so far: a long run cut short keeps what it measured
    _common.print_table(TITLE, rows, COLUMNS)
    print(f"results written to {args.out}", flush=True)
    return 0


def _prepare(path: str, backend: str, dtype: str) -> None:
    """Export and gate once, untimed, so every measured worker finds the export on disk."""
    run_way("processes", {"model": path, "backend": backend, "dtype": dtype, "threads": os.cpu_count() or 1}, 1)


def _weights_bytes(path: str) -> int:
    from lancedb_baai.models.fingerprint import weights_bytes

    return weights_bytes(Path(path))


def _row(name: str, path: str, tiny: str, weights: int, backend: str, dtype: str, way: str,
         workers: int, requests: int) -> list[dict[str, Any]]:
    rows = []
    variants = [False] + ([True] if backend in ("torch", "onnx") and way == "spawn" else [])
    for private in variants:
        spec = {"model": path, "backend": backend, "dtype": dtype, "private": private,
                "texts": TEXTS if weights < 2**29 else TEXTS // 4,  # a large model: fewer, it is slow
                "requests": requests if way in ("fork", "serve") else 0}
        print(f"  {name} {backend} {dtype}{' private' if private else ''}: {way} x{workers}", flush=True)
        model = run_way(way, spec, workers)
        baseline = run_way(way, {**spec, "model": tiny}, workers)
        results = model["results"]
        attributable = model["pss"] - baseline["pss"]
        rows.append({
            "model": name, "backend": backend, "dtype": results[0]["dtype"], "weights": "private" if private
            else "as served", "way": way, "workers": workers, "weights_mib": weights / 2**20,
            "pss_mib": model["pss"] / 2**20, "model_mib": attributable / 2**20,
            "model_x_weights": attributable / weights,
            "first_vector_s": _median(r["first_s"] for r in results),
            "texts_per_s_per_worker": statistics.median(r["texts_per_s"] for r in results),
            "mapped_mib": _mib(_median(r.get("weights_mapped_bytes") for r in results)),
            "private_mib": _mib(_median(r.get("weights_private_bytes") for r in results)),
            "shared_weights": results[0].get("shared_weights"), "requests_per_worker": spec["requests"],
        })
    return rows


COLUMNS = [("model", "model", ""), ("backend", "backend", ""), ("dtype", "dtype", ""), ("weights", "weights", ""),
           ("way", "way", ""), ("workers", "N", ""), ("weights_mib", "weights MiB", ".0f"),
           ("pss_mib", "total PSS MiB", ".0f"), ("model_mib", "model MiB", ".0f"),
           ("model_x_weights", "x weights", ".2f"), ("first_vector_s", "first vector s", ".2f"),
           ("texts_per_s_per_worker", "texts/s/worker", ".1f"), ("mapped_mib", "mapped MiB", ".0f"),
           ("private_mib", "private MiB", ".0f")]


TITLE = "memory attributable to the model (total PSS minus the same workers on a tiny model)"


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # written after every row: say so once, at the end
        _common.write_json(args.out, {"benchmark": "memory", "quick": args.quick,
                                      "machine": _common.machine_info(), "rows": rows})


if __name__ == "__main__":
    _common.run_main(main)
