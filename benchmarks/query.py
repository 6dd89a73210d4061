"""Run with: .venv/bin/python benchmarks/query.py [--quick] [--rounds 5] [--out PATH]

One short query against its floor on this CPU. A warm query spends its milliseconds in the
encoder's matrix products at a handful of rows: too few rows to keep the cores' vector units
busy, so their time is set by fetching the weights and by the kernels' cost per product, not
by the FLOP/s bulk work reaches. In one process, on the packaged all-MiniLM-L6-v2 and short
questions on Python's reference topics (rows = their median token count), this measures:

* engine: the whole call of the "auto" engine (``--backend``/``--dtype`` pick another), as a
  user makes it, with the streams ``LANCEDB_BAAI_STREAMS`` sets (by default one, of every thread);
* graph (OpenVINO engines): the engine's export compiled as the engine compiles it, fed the
  question's token ids (what the call costs without tokenizing, padding and pooling); and the
  same export compiled for exactly the rows of the query, fed every question cut or padded to
  them (no engine can take queries of any length that way, but it is the runtime's best for
  this graph: no shape handling at run time);
* matmuls, T thread(s): only the encoder's matrix products, with the model's own weights in the
  engine's precision, chained as in the model (an add between them), at the query's rows, on
  OpenVINO's CPU plugin and on torch, with one thread and with every thread: what a graph of this
  model on those kernels does not go below;
* weights read, T thread(s): reading those weights' bytes once; when they exceed the last-level
  cache every query fetches them again, and this is the memory's floor.

Contenders alternate in rounds, in one order then the reverse; each round times every
question once; medians. With ``ONEDNN_MAX_CPU_ISA=AVX2`` (and ``MKL_ENABLE_INSTRUCTIONS=AVX2``
for torch's float32 matmuls) the kernels are those of an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import _common

_OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 1)")
    parser.add_argument("--backend", default="auto", help="the engine's backend (default auto)")
    parser.add_argument("--dtype", default="auto", help="its dtype (default auto)")


def encoder_weights(model_dir: str) -> list[np.ndarray]:
    """The encoder's Linear weights ([out, in], float32), in the order a token passes them."""
    from transformers import AutoModel

    return [m.weight.detach().numpy().copy() for m in _common.encoder_linears(AutoModel.from_pretrained(model_dir))]


def chain_steps(weights: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Which weights each step multiplies by: Q, K, V side by side, then one at a time.

    A BERT layer has six Linear layers: query, key, value (all from the same input), the
    attention output, the intermediate and the output; the chain follows that dependency.
    """
    if len(weights) % 6:
        raise ValueError(f"expected six Linear layers per encoder layer, got {len(weights)} in all")
    steps = []
    for base in range(0, len(weights), 6):
        steps += [(base, base + 1, base + 2), (base + 3,), (base + 4,), (base + 5,)]
    return steps


def graph_calls(engine: Any, feeds: list[dict[str, np.ndarray]], rows: int, threads: int,
                fixed: bool) -> Callable[[str], Any]:
    """The engine's OpenVINO export compiled by its runtime as the engine's was, or for ``rows`` tokens only.

    Calls take the questions' feeds in turn; for the fixed shape each is cut or padded to ``rows``.
    """
    import openvino as ov

    session = engine.session
    if fixed:
        core = ov.Core()
        model = core.read_model(str(session.directory / "model.xml"))
        model.reshape({port.get_any_name(): [1, rows] for port in model.inputs})
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[engine.key.dtype], "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)})
        feeds = [{name: np.pad(array[:, :rows], ((0, 0), (0, max(0, rows - array.shape[1]))))
                  for name, array in feed.items()} for feed in feeds]
    else:
        compiled = session.runtime.compile(session.directory, engine.key.dtype, threads).compiled
    request = compiled.create_infer_request()
    turns = itertools.cycle(feeds)
    return lambda _: request.infer(next(turns))


def openvino_chain(weights: list[np.ndarray], rows: int, precision: str, threads: int) -> Callable[[], Any]:
    """The matrix products alone as one compiled OpenVINO model of one stream of ``threads`` threads."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([rows, weights[0].shape[1]], np.float32, name="x")
    h = x
    for step in chain_steps(weights):
        products = [ops.matmul(h, ops.constant(weights[i]), False, True) for i in step]
        h = products[0]
        for other in products[1:]:
            h = ops.add(h, other)
    compiled = ov.Core().compile_model(ov.Model([h], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    feeds = {"x": np.random.default_rng(0).standard_normal((rows, weights[0].shape[1]), dtype=np.float32)}
    return lambda: request.infer(feeds)


def torch_chain(weights: list[np.ndarray], rows: int, dtype: str, threads: int) -> Callable[[], Any]:
    """The matrix products alone on torch (MKL for float32, oneDNN for bfloat16) with ``threads`` threads."""
    import torch

    tensors = [torch.from_numpy(w).to(getattr(torch, dtype)) for w in weights]
    x = torch.randn(rows, weights[0].shape[1]).to(getattr(torch, dtype))
    steps = chain_steps(weights)

    def run() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            h = x
            for step in steps:
                out = torch.nn.functional.linear(h, tensors[step[0]])
                for i in step[1:]:
                    out = out + torch.nn.functional.linear(h, tensors[i])
                h = out
    return run


def weights_read(size: int, threads: int, pool: concurrent.futures.Executor) -> Callable[[], Any]:
    """Reading ``size`` bytes (the weights' size in the engine's precision) once, split over ``threads`` threads."""
    buffer = np.ones(size // 8, dtype=np.float64)  # numpy releases the GIL while it sums
    parts = np.array_split(buffer, threads)
    return lambda: list(pool.map(np.sum, parts))


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache's size from sysfs (the L3 on these machines), or None if unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text(encoding="utf-8").strip()
        unit = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * unit)
    return max(sizes) if sizes else None


def main() -> int:
    args = _common.parse_args("query", __doc__, add_args)
    import lancedb_baai
    from lancedb_baai.runtimes.base import default_threads
    from lancedb_baai.runtimes.streams import streams
    from transformers import AutoTokenizer

    rounds = args.rounds or (1 if args.quick else 5)
    questions = _common.questions(20 if args.quick else 200)
    model_dir = _common.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = int(statistics.median(len(tokenizer(q)["input_ids"]) for q in questions))
    engine = lancedb_baai.BAAIEmbeddings(name=model_dir, backend=args.backend, dtype=args.dtype).engine()
    dtype = engine.key.dtype if engine.key.dtype in _OPENVINO_PRECISION else "float32"
    weights = encoder_weights(model_dir)
    weight_bytes = sum(w.size for w in weights) * (2 if dtype == "bfloat16" else 4)
    threads = default_threads()
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    contenders: dict[str, Callable[[str], Any]] = {
        f"engine ({engine.key.backend} {engine.key.dtype}, {streams(threads)} stream(s))":
            lambda question: engine.encode([question])}
    if engine.key.backend == "openvino":
        feeds = [{name: array for name, array in tokenizer([q], return_tensors="np").items()
                  if name in engine.graph.inputs} for q in questions]
        contenders["graph as the engine compiles it"] = graph_calls(engine, feeds, rows, threads, False)
        contenders[f"graph for {rows} tokens only, 1 stream"] = graph_calls(engine, feeds, rows, threads, True)
    for count in sorted({1, threads}):
        products = openvino_chain(weights, rows, _OPENVINO_PRECISION[dtype], count)
        contenders[f"matmuls, openvino {dtype}, {count} thread(s)"] = lambda _, run=products: run()
        products = torch_chain(weights, rows, dtype, count)
        contenders[f"matmuls, torch {dtype}, {count} thread(s)"] = lambda _, run=products: run()
        read = weights_read(weight_bytes, count, pool)
        contenders[f"weights read, {count} thread(s)"] = lambda _, run=read: run()

    for fn in contenders.values():  # warm-up: one call per question each
        _common.seconds_per_call(fn, questions)
    load_before = _common.load_average()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for number in range(rounds):
        for name in order if number % 2 == 0 else order[::-1]:
            seconds[name] += _common.seconds_per_call(contenders[name], questions)  # matmuls and reads ignore the text
        print(f"  round {number + 1}/{rounds} done", flush=True)
    load_after = _common.load_average()

    results = [{"contender": name, "median_ms": statistics.median(s) * 1000,
                "p10_ms": float(np.percentile(s, 10)) * 1000, "calls": len(s)} for name, s in seconds.items()]
    cache = last_level_cache_bytes()
    _common.print_table(f"\none query of {rows} tokens, {threads} thread(s); encoder weights "
                        f"{weight_bytes / 2**20:.1f} MiB in {dtype}, last-level cache "
                        f"{(cache or 0) / 2**20:.0f} MiB (medians of {rounds} round(s))", results, [
                            ("contender", "contender", ""), ("median_ms", "median ms", ".2f"),
                            ("p10_ms", "p10 ms", ".2f")])
    _common.write_json(args.out, {
        "machine": _common.machine_info(embed=f"{engine.key.backend} {engine.key.dtype}"), "quick": args.quick,
        "rounds": rounds, "rows": rows, "threads": threads, "streams": streams(threads),
        "weights_bytes": weight_bytes, "last_level_cache_bytes": cache,
        "weights_exceed_cache": cache is not None and weight_bytes > cache,
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        "load_average_before": load_before, "load_average_after": load_after, "results": results})
    return 0


if __name__ == "__main__":
    _common.run_main(main)
