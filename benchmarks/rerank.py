"""Run with: .venv/bin/python benchmarks/rerank.py [--quick] [--out PATH] [--plot PATH.png]

Reranking latency of `BAAIReranker` against LanceDB's `CrossEncoderReranker`, same model.

No trained cross-encoder is available offline, so a MiniLM-L6-shaped one (hidden 384, 6
layers, 12 heads, intermediate 1536, one label) is built in a temporary folder from the
packaged all-MiniLM-L6-v2 encoder with a random scoring head; both rerankers load that
folder. Each is called the way LanceDB calls it, ``rerank_vector(query, results)`` on a
pyarrow table with a ``text`` and a ``_distance`` column, for short questions over
candidate sets of 50 and 200 paragraphs of Python's reference topics. Reported:

* ms per query at each candidate count, in interleaved rounds after a warm-up, and the
  ratio to ``CrossEncoderReranker``;
* Spearman correlation of the default (auto dtype) scores with float32 scores per query,
  and of float32 with ``CrossEncoderReranker`` (the same model, so ~1.0);
* resident memory growth over N calls of 50 passages after a warm-up pass over the 50
  candidate sets used, for both (RSS sampled every N/10 calls in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path
from typing import Any

import _common
import numpy as np

OURS = "local-baai-rerank auto"
OURS_FP32 = "local-baai-rerank float32"
THEIRS = "lancedb CrossEncoderReranker"


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; quick 1)")
    parser.add_argument("--queries", type=int, default=None, help="queries per candidate count (default 10; quick 1)")
    parser.add_argument("--rss-calls", type=int, default=None,
                        help="rerank calls of the memory-growth check (default 1000; quick 5)")


def main() -> int:
    args = _common.parse_args("rerank", __doc__, _options)
    rounds = args.rounds or (1 if args.quick else 3)
    n_queries = args.queries or (1 if args.quick else 10)
    counts = (4, 8) if args.quick else (50, 200)
    rss_calls = args.rss_calls or (5 if args.quick else 1000)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        bench = RerankBench(_common.build_minilm_cross_encoder(Path(tmp) / "ms-marco-MiniLM-L-6-shaped"))
        rows = [bench.latency(count, n_queries, rounds) for count in counts]
        fidelity = bench.fidelity(counts[0], 20 if not args.quick else n_queries)
        memory = [bench.memory(name, counts[0], rss_calls, 2 if args.quick else None) for name in (OURS, THEIRS)]
        _report(args, bench, rows, fidelity, memory, rounds)
    return 0


class RerankBench:
    """The rerankers under test, all on one cross-encoder folder, and the candidate tables."""

    def __init__(self, model_dir: str) -> None:
        from lancedb.rerankers import CrossEncoderReranker

        from lancedb_baai import BAAIReranker

        self.model_dir = model_dir
        self.texts = _common.corpus()
        self.rerankers = {
            OURS: BAAIReranker(model_dir, column="text", device="cpu"),
            OURS_FP32: BAAIReranker(model_dir, column="text", device="cpu", dtype="float32"),
            THEIRS: CrossEncoderReranker(model_name=model_dir, column="text", device="cpu"),
        }
        self.dtypes = {name: r.function.engine_key().dtype for name, r in self.rerankers.items() if name != THEIRS}
        self.dtypes[THEIRS] = "float32"
        self.questions = _common.questions(200)

    def candidates(self, query_index: int, count: int) -> tuple[str, Any]:
        """A query and ``count`` consecutive paragraphs as a vector-search result table."""
        import pyarrow as pa

        start = (query_index * 97) % len(self.texts)
        ids = [(start + i) % len(self.texts) for i in range(count)]
        table = pa.table({"id": ids, "text": [self.texts[i] for i in ids],
                          "_distance": pa.array(np.linspace(0.1, 1.0, count), pa.float32())})
        return self.questions[query_index % len(self.questions)], table

    def latency(self, count: int, n_queries: int, rounds: int) -> dict[str, Any]:
        """ms per query for each reranker at ``count`` candidates."""
        work = [self.candidates(i, count) for i in range(n_queries)]
        tokens = sum(sum(_common.token_lengths(self.model_dir, t["text"].to_pylist(), 512, pairs_with=q))
                     for q, t in work)

        def run(reranker):
            return lambda: [reranker.rerank_vector(q, t) for q, t in work]

        print(f"{count} candidates x {n_queries} queries ({tokens} tokens)", flush=True)
        warmup = {name: (lambda r=r: r.rerank_vector(*work[0])) for name, r in self.rerankers.items()}
        timings = _common.interleaved({name: run(r) for name, r in self.rerankers.items()}, rounds, warmup)
        row: dict[str, Any] = {"candidates": count, "queries": n_queries, "tokens_per_query": tokens / n_queries}
        theirs = timings.best(THEIRS)
        for name in self.rerankers:
            row[f"{name} ms"] = 1000 * timings.best(name) / n_queries
            row[f"{name} x"] = theirs / timings.best(name)
            row[f"{name} seconds_all"] = timings.seconds[name]
        return row

    def fidelity(self, count: int, n_queries: int) -> dict[str, Any]:
        """Rank agreement of auto vs float32 scores, and of float32 vs CrossEncoder, per query."""
        auto, fp32 = self.rerankers[OURS].function, self.rerankers[OURS_FP32].function
        cross = self.rerankers[THEIRS].model
        vs_fp32, vs_cross = [], []
        for i in range(n_queries):
            query, table = self.candidates(i, count)
            passages = table["text"].to_pylist()
            reference = fp32.score(query, passages)
            vs_fp32.append(_common.spearman(auto.score(query, passages), reference))
            vs_cross.append(_common.spearman(reference, cross.predict([[query, p] for p in passages])))
        return {"candidates": count, "queries": n_queries, "auto_dtype": self.dtypes[OURS],
                "spearman_auto_vs_fp32_mean": float(np.mean(vs_fp32)),
                "spearman_auto_vs_fp32_min": float(np.min(vs_fp32)),
                "spearman_fp32_vs_cross_encoder_min": float(np.min(vs_cross))}

    def memory(self, name: str, count: int, calls: int, warmup: int | None) -> dict[str, Any]:
        """Resident memory before and after ``calls`` reranks of ``count`` passages, after warm-up.

        The calls cycle through 50 candidate sets of different lengths, as real queries do.
        The warm-up runs each of them once (or ``warmup`` of them), so the allocator's
        high-water mark for these shapes is reached before the first reading; growth after
        that is what a long-running service would keep accumulating.
        """
        reranker = self.rerankers[name]
        work = [self.candidates(i, count) for i in range(50)]
        for q, t in work[:warmup]:
            reranker.rerank_vector(q, t)
        gc.collect()
        before = _common.rss_bytes()
        samples = []
        for call in range(calls):
            reranker.rerank_vector(*work[call % len(work)])
            if (call + 1) % max(1, calls // 10) == 0:
                samples.append(_common.rss_bytes())
        gc.collect()
        after = _common.rss_bytes()
        print(f"  memory: {name}: {calls} calls, RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB", flush=True)
        return {"reranker": name, "calls": calls, "candidates": count, "warmup_calls": min(len(work), warmup or 50),
                "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
                "growth_mib": (after - before) / 2**20, "growth_fraction": (after - before) / before,
                "rss_samples_mib": [s / 2**20 for s in samples]}


def _report(args: argparse.Namespace, bench: RerankBench, rows: list[dict[str, Any]], fidelity: dict[str, Any],
            memory: list[dict[str, Any]], rounds: int) -> None:
    print()
    columns = [("candidates", "candidates", "d"), ("tokens_per_query", "tokens/query", ".0f")]
    for name in bench.rerankers:
        columns += [(f"{name} ms", f"{name} ms/query", ".1f"), (f"{name} x", "x CrossEnc", ".2f")]
    _common.print_table(f"Reranking, ms per query, best of {rounds} round(s) "
                        f"({', '.join(f'{k}={v}' for k, v in bench.dtypes.items())})", rows, columns)
    print()
    _common.print_table("Fidelity and memory", [
        {"figure": f"Spearman auto vs float32, mean over {fidelity['queries']} queries",
         "value": fidelity["spearman_auto_vs_fp32_mean"], "target": ">= 0.99"},
        {"figure": "Spearman auto vs float32, worst query", "value": fidelity["spearman_auto_vs_fp32_min"]},
        {"figure": "Spearman float32 vs CrossEncoder, worst query",
         "value": fidelity["spearman_fp32_vs_cross_encoder_min"]},
        *({"figure": f"RSS growth {m['reranker']}, {m['calls']} calls", "value": m["growth_fraction"],
           "detail": f"{m['growth_mib']:+.1f} MiB of {m['rss_before_mib']:.0f}",
           "target": "< 1%" if m["reranker"] == OURS else ""} for m in memory),
    ], [("figure", "figure", ""), ("value", "value", ".4f"), ("detail", "detail", ""), ("target", "target", "")])
    first = rows[0]
    ours_memory = next(m for m in memory if m["reranker"] == OURS)
    payload = {
        "benchmark": "rerank", "quick": args.quick, "rounds": rounds,
        "machine": _common.machine_info(**bench.dtypes),
        "model": {"shape": "BERT hidden 384, 6 layers, 12 heads, intermediate 1536, num_labels=1",
                  "weights": "all-MiniLM-L6-v2 encoder, random seeded head"},
        "results": rows, "fidelity": fidelity, "memory": memory,
        "targets": {"rerank_vs_cross_encoder": 4.0, "rerank_vs_cross_encoder_met": first[f"{OURS} x"] >= 4.0,
                    "spearman": 0.99, "spearman_met": fidelity["spearman_auto_vs_fp32_mean"] >= 0.99,
                    "rss_growth_fraction": 0.01, "rss_growth_met": ours_memory["growth_fraction"] < 0.01},
    }
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, "Reranking latency, MiniLM-L6-shaped cross-encoder on CPU", [
        (f"ms per query, {row['candidates']} candidates", list(bench.rerankers),
         [row[f"{name} ms"] for name in bench.rerankers]) for row in rows
    ])


if __name__ == "__main__":
    _common.run_main(main)
