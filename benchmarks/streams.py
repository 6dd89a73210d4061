"""Run with: .venv/bin/python benchmarks/streams.py [--quick] [--rounds 2] [--busy N] [--out PATH]

OpenVINO's streams on this host: two streams of one thread (``LANCEDB_BAAI_STREAMS=2``, what
the server and Ray actors compile with) against one stream of two threads (the default), for
what "auto" runs (``--backend``/``--dtype`` pick another engine). The number of streams is fixed when a
model compiles, so each setting runs in a fresh process, the settings alternating (A B, then B A)
for ``--rounds`` rounds. Each process measures, on the packaged all-MiniLM-L6-v2 and a
cross-encoder of its shape (``benchmarks/rerank.py`` builds the same one):

* bulk: texts/s embedding paragraphs of Python's reference topics in calls of 64 (median of 3);
* one query: ms of one warm short question, median over the questions;
* rerank: ms per query of 50 candidates (median).

``--busy N`` runs N busy-loop processes meanwhile: two streams stand a core taken by
something else far better than a two-thread pool, which waits at every barrier for the thread
whose core is taken; one stream gives a single query both cores on an idle host.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from lancedb_baai.runtimes.streams import STREAMS_ENV

SETTINGS = ("2", "1")
LABELS = {"2": "2 streams x 1 thread", "1": "1 stream x 2 threads"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="A B rounds of fresh processes (default 2; quick 1)")
    parser.add_argument("--busy", type=int, default=0, metavar="N", help="busy-loop processes during the rounds")
    parser.add_argument("--backend", default="openvino", help="the embedder's backend (default openvino)")
    parser.add_argument("--dtype", default="auto", help="its dtype (default auto: bf16 where native)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cross-encoder", default=None, help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One process's figures, with the streams ``LANCEDB_BAAI_STREAMS`` sets."""
    import lancedb_baai

    sizes = (64, 10, 8, 2) if args.quick else (600, 200, 50, 10)  # paragraphs, questions, candidates, reranks
    texts, questions = _common.corpus(sizes[0]), _common.questions(sizes[1])
    embed = lancedb_baai.BAAIEmbeddings(name=_common.minilm_path(), backend=args.backend,
                                        dtype=args.dtype).engine()
    rerank = lancedb_baai.BAAIRerankFunction(name=args.cross_encoder, backend=args.backend,
                                             dtype=args.dtype).loaded().engine
    embed.encode(texts[:64])
    bulk = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(texts), 64):
            embed.encode(texts[i:i + 64])
        bulk.append(len(texts) / (time.perf_counter() - start))
    for question in questions[:5]:
        embed.encode([question])
    one = _common.seconds_per_call(lambda question: embed.encode([question]), questions * 3)
    sets = [(questions[q], [texts[(q * 97 + i) % len(texts)] for i in range(sizes[2])]) for q in range(sizes[3])]
    rerank.score(*sets[0])
    ranked = _common.seconds_per_call(lambda pair: rerank.score(*pair), sets * 3)
    return {"streams": os.environ.get(STREAMS_ENV), "engine": f"{embed.key.backend} {embed.key.dtype}",
            "bulk_texts_per_s": statistics.median(bulk),
            "one_query_ms": statistics.median(one) * 1000, "rerank_ms": statistics.median(ranked) * 1000}


def run_worker(setting: str, args: argparse.Namespace, cross_encoder: str) -> dict[str, Any]:
    env = {**os.environ, STREAMS_ENV: setting, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, __file__, "--worker", setting, "--cross-encoder", cross_encoder,
            "--backend", args.backend, "--dtype", args.dtype, *(["--quick"] if args.quick else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the {LABELS[setting]} process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    args = _common.parse_args("streams", __doc__, add_args)
    if args.worker is not None:
        print(json.dumps(measure(args)), flush=True)
        return 0
    rounds = args.rounds or (1 if args.quick else 2)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        cross_encoder = _common.build_minilm_cross_encoder(Path(tmp) / "cross-encoder")
        run_worker(SETTINGS[0], args, cross_encoder)  # exports and gates once, outside the rounds
        load_before = _common.load_average()
        with _common.busy(args.busy):
            for number in range(rounds):
                for setting in SETTINGS if number % 2 == 0 else SETTINGS[::-1]:
                    runs[setting].append(run_worker(setting, args, cross_encoder))
                    print(f"  round {number + 1}/{rounds}: {LABELS[setting]}: {runs[setting][-1]}", flush=True)
        load_after = _common.load_average()
    rows = [{"setting": LABELS[s], "engine": runs[s][0]["engine"],
             **{key: statistics.median(r[key] for r in runs[s])
                for key in ("bulk_texts_per_s", "one_query_ms", "rerank_ms")}} for s in SETTINGS]
    _common.print_table(f"\nstreams ({args.busy} busy loops; medians of {rounds} process(es) each)", rows, [
        ("setting", "setting", ""), ("engine", "runs as", ""), ("bulk_texts_per_s", "bulk texts/s", ".1f"),
        ("one_query_ms", "one query ms", ".2f"), ("rerank_ms", "rerank ms", ".1f")])
    _common.write_json(args.out, {"machine": _common.machine_info(embed=rows[0]["engine"]), "quick": args.quick,
                                  "busy": args.busy, "rounds": rounds, "load_average_before": load_before,
                                  "load_average_after": load_after, "results": rows, "runs": runs})
    return 0


if __name__ == "__main__":
    _common.run_main(main)
