"""Run with: .venv/bin/python benchmarks/rerank.py [--quick] [--out PATH] [--plot PATH.png]

Reranking latency of `BAAIReranker` on each backend against LanceDB's `CrossEncoderReranker`, same model.

No trained cross-encoder is available offline, so a MiniLM-L6-shaped one (hidden 384, 6
layers, 12 heads, intermediate 1536, one label) is built from the packaged
all-MiniLM-L6-v2 encoder with a random scoring head (``--model tiny``: a tiny random one,
for smoke runs); every reranker loads that folder. Each is called the way LanceDB calls it,
``rerank_vector(query, results)`` on a pyarrow table with a ``text`` and a ``_distance``
column, for short questions over candidate sets of 50 (and 200) paragraphs of Python's
reference topics. The contenders are those of ``benchmarks/embed.py``: torch in its own
"auto" dtype (the previous default) and in float32, ``backend="auto"`` (the default), ONNX
Runtime and OpenVINO in float32 and in int8 (``min_fidelity=0``), OpenVINO bf16 where the
CPU runs it natively. Each one's first use (export once per machine, fidelity gate) happens
before the rounds. Reported:

* ms per query at each candidate count, in interleaved rounds after a warm-up, and the
  ratio to ``CrossEncoderReranker``;
* Spearman correlation of each contender's scores with torch float32 scores per query
  (mean and worst query), and the package's gate verdict at the precision's default;
* resident memory growth over N calls of 50 passages after a warm-up pass over the 50
  candidate sets used, for the default and ``CrossEncoderReranker`` (RSS sampled every
  N/10 calls in the JSON).

``--busy N`` runs N busy-loop processes during the timed rounds.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

THEIRS = _common.BUILTIN_KEY
REFERENCE = _common.REFERENCE_KEY
OURS = "auto"
LABELS = {THEIRS: "lancedb CrossEncoderReranker"}


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; quick 1)")
    parser.add_argument("--queries", type=int, default=None, help="queries per candidate count (default 10; quick 1)")
    parser.add_argument("--counts", default=None, help="comma-separated candidate counts (default 50,200; quick 4,8)")
    parser.add_argument("--fidelity-queries", type=int, default=None,
                        help="queries of the Spearman comparison (default 20; quick: --queries)")
    parser.add_argument("--rss-calls", type=int, default=None,
                        help="rerank calls of the memory-growth check (default 1000; quick 5)")
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm",
                        help="the MiniLM-L6-shaped cross-encoder (default) or a tiny random one (smoke runs)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="keep the built cross-encoder here (reused, so are its exports; default: a "
                             "temporary folder)")
    _common.contender_option(parser)


def main() -> int:
    args = _common.parse_args("rerank", __doc__, _options)
    environment = _common.backend_environment()
    contenders, skipped = _common.pick_contenders(args.contenders, args.quick)
    for row in skipped:
        row["method"] = row["method"].replace("local-baai", "local-baai-rerank")
    rounds = args.rounds or (1 if args.quick else 3)
    n_queries = args.queries or (1 if args.quick else 10)
    counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else ((4, 8) if args.quick else (50, 200))
    rss_calls = args.rss_calls or (5 if args.quick else 1000)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        model_dir = _model(args.model, args.model_dir or Path(tmp) / f"{args.model}-cross-encoder")
        bench = RerankBench(model_dir, contenders)
        bench.prepare()
        load_before = _common.load_average()
        with _common.busy(args.busy):
            latency = {count: bench.latency(count, n_queries, rounds) for count in counts}
        load_after = _common.load_average()
        fidelity = bench.fidelity(counts[0], args.fidelity_queries or (20 if not args.quick else n_queries))
        memory = [bench.memory(key, counts[0], rss_calls, 2 if args.quick else None)
                  for key in (OURS, THEIRS) if key in bench.rerankers]
        rows = bench.rows(latency, fidelity)
        _report(args, bench, rows, skipped, fidelity, memory, rounds, counts,
                {"environment": environment, "busy": args.busy, "load_average_before": load_before,
                 "load_average_after": load_after, "latency": latency})
    return 0


def _model(kind: str, directory: Path) -> str:
    if kind == "minilm":
        return _common.build_minilm_cross_encoder(directory)
    from lancedb_baai import testing

    if not (directory / "config.json").is_file():
        testing.build_cross_encoder(directory, hidden=64, layers=2, max_length=128, seed=8)
        testing.sharpen(directory, "AutoModelForSequenceClassification", 1.0, seed=8)
    return str(directory)


class RerankBench:
    """The rerankers under test, all on one cross-encoder folder, and the candidate tables."""

    def __init__(self, model_dir: str, contenders: list[_common.Contender]) -> None:
        from lancedb.rerankers import CrossEncoderReranker

        from lancedb_baai import BAAIReranker

        self.model_dir = model_dir
        self.texts = _common.corpus()
        self.contenders = {c.key: c for c in contenders}
        self.labels = {c.key: LABELS.get(c.key, c.label.replace("local-baai", "local-baai-rerank"))
                       for c in contenders}
        self.rerankers = {}
        for c in contenders:
            if c.options is None:
                self.rerankers[c.key] = CrossEncoderReranker(model_name=model_dir, column="text", device="cpu")
            else:
                self.rerankers[c.key] = BAAIReranker(model_dir, column="text", device="cpu", **c.options)
        self.choices: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, dict[str, Any] | None] = {}
        self.first_use: dict[str, float] = {}
        self.questions = _common.questions(200)

    @property
    def dtypes(self) -> dict[str, str]:
        return {key: choice["dtype"] for key, choice in self.choices.items()}

    def prepare(self) -> None:
        """First use of each reranker, before any timing: exports, gates and loads happen here."""
        for key, reranker in self.rerankers.items():
            start = time.perf_counter()
            reranker.rerank_vector(*self.candidates(0, 2))
            self.first_use[key] = time.perf_counter() - start
            if key == THEIRS:
                self.choices[key] = {"backend": "sentence-transformers", "dtype": "float32", "reason": "built-in"}
            else:
                choice = reranker.function.backend_choice()
                self.choices[key] = {"backend": choice.backend, "dtype": choice.dtype, "reason": choice.reason}
                self.gates[key] = reranker.function.loaded().fidelity
            print(f"  first use: {self.labels[key]}: {self.first_use[key]:.1f}s -> "
                  f"{self.choices[key]['backend']} {self.choices[key]['dtype']}", flush=True)

    def candidates(self, query_index: int, count: int) -> tuple[str, Any]:
        """A query and ``count`` consecutive paragraphs as a vector-search result table."""
        import pyarrow as pa

        start = (query_index * 97) % len(self.texts)
        ids = [(start + i) % len(self.texts) for i in range(count)]
        table = pa.table({"id": ids, "text": [self.texts[i] for i in ids],
                          "_distance": pa.array(np.linspace(0.1, 1.0, count), pa.float32())})
        return self.questions[query_index % len(self.questions)], table

    def latency(self, count: int, n_queries: int, rounds: int) -> dict[str, Any]:
        """ms per query for each reranker at ``count`` candidates, and model loads during the rounds."""
        work = [self.candidates(i, count) for i in range(n_queries)]
        tokens = sum(sum(_common.token_lengths(self.model_dir, t["text"].to_pylist(), 512, pairs_with=q))
                     for q, t in work)
        loads = {key: 0 for key in self.rerankers}
        counter = _common.STLoadCounter.install()

        def run(key, reranker):
            def call():
                before = counter.count + _common.package_loads()
                for q, t in work:
                    reranker.rerank_vector(q, t)
                loads[key] += counter.count + _common.package_loads() - before
            return call

        print(f"{count} candidates x {n_queries} queries ({tokens} tokens)", flush=True)
        warmup = {key: (lambda r=r: r.rerank_vector(*work[0])) for key, r in self.rerankers.items()}
        timings = _common.interleaved({key: run(key, r) for key, r in self.rerankers.items()}, rounds, warmup)
        result: dict[str, Any] = {"candidates": count, "queries": n_queries, "tokens_per_query": tokens / n_queries}
        theirs = timings.median(THEIRS)
        for key in self.rerankers:
            result[key] = {"ms": 1000 * timings.median(key) / n_queries,
                           "ms_best": 1000 * timings.best(key) / n_queries,
                           "x": theirs / timings.median(key), "seconds_all": timings.seconds[key],
                           "loads_during_timing": loads[key]}
        return result

    def fidelity(self, count: int, n_queries: int) -> dict[str, Any]:
        """Spearman of each reranker's scores with torch float32 scores, per query."""
        reference = self.rerankers[REFERENCE].function
        per: dict[str, list[float]] = {key: [] for key in self.rerankers}
        for i in range(n_queries):
            query, table = self.candidates(i, count)
            passages = table["text"].to_pylist()
            expected = reference.score(query, passages)
            for key, reranker in self.rerankers.items():
                if key == THEIRS:
                    scores = reranker.model.predict([[query, p] for p in passages])
                else:
                    scores = reranker.function.score(query, passages)
                per[key].append(_common.spearman(scores, expected))
        return {"candidates": count, "queries": n_queries, "reference": "local-baai-rerank torch float32",
                "methods": {key: {"spearman_mean": float(np.mean(v)), "spearman_min": float(np.min(v))}
                            for key, v in per.items()},
                "spearman_fp32_vs_cross_encoder_min": float(np.min(per[THEIRS]))}

    def rows(self, latency: dict[int, dict[str, Any]], fidelity: dict[str, Any]) -> list[dict[str, Any]]:
        from lancedb_baai.models import fidelity as _fidelity

        rows = []
        for key in self.rerankers:
            dtype = self.choices[key]["dtype"]
            gate = self.gates.get(key)
            if gate is None:
                verdict = "reference" if key == REFERENCE else "n/a"
            else:
                verdict = "pass" if _fidelity.passes(gate, dtype, None) else "fail"
            row = {"key": key, "method": self.labels[key], "backend": self.choices[key]["backend"], "dtype": dtype,
                   "resolved": f"{self.choices[key]['backend']} {dtype}", "reason": self.choices[key]["reason"],
                   "options": self.contenders[key].options,
                   "spearman_mean": fidelity["methods"][key]["spearman_mean"],
                   "spearman_min": fidelity["methods"][key]["spearman_min"],
                   "gate": verdict, "gate_score": gate["score"] if gate else None, "gate_figures": gate,
                   "first_use_s": self.first_use[key],
                   "loads_during_timing": sum(latency[c][key]["loads_during_timing"] for c in latency)}
            for count, result in latency.items():
                row[f"ms_{count}"] = result[key]["ms"]
                row[f"x_{count}"] = result[key]["x"]
            rows.append(row)
        return rows

    def memory(self, key: str, count: int, calls: int, warmup: int | None) -> dict[str, Any]:
        """Resident memory before and after ``calls`` reranks of ``count`` passages, after warm-up.

        The calls cycle through 50 candidate sets of different lengths, as real queries do.
        The warm-up runs each of them once (or ``warmup`` of them), so the allocator's
        high-water mark for these shapes is reached before the first reading; growth after
        that is what a long-running service would keep accumulating.
        """
        reranker = self.rerankers[key]
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
        print(f"  memory: {self.labels[key]}: {calls} calls, RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB",
              flush=True)
        return {"reranker": self.labels[key], "key": key, "calls": calls, "candidates": count,
                "warmup_calls": min(len(work), warmup or 50),
                "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
                "growth_mib": (after - before) / 2**20, "growth_fraction": (after - before) / before,
                "rss_samples_mib": [s / 2**20 for s in samples]}


def _report(args: argparse.Namespace, bench: RerankBench, rows: list[dict[str, Any]], skipped: list[dict[str, Any]],
            fidelity: dict[str, Any], memory: list[dict[str, Any]], rounds: int, counts: tuple[int, ...],
            extra: dict[str, Any]) -> None:
    print()
    columns = [("method", "method", ""), ("resolved", "runs as", "")]
    for count in counts:
        columns += [(f"ms_{count}", f"ms/query @{count}", ".1f"), (f"x_{count}", f"x CrossEnc @{count}", ".2f")]
    columns += [("spearman_mean", "Spearman", ".4f"), ("spearman_min", "worst", ".4f"),
                ("gate_score", "gate score", ".4f"), ("gate", "gate", ""), ("loads_during_timing", "loads", "d"),
                ("first_use_s", "first use s", ".1f"), ("skipped", "skipped", "")]
    busy = f", {args.busy} busy-loop process(es)" if args.busy else ""
    _common.print_table(f"Reranking, ms per query, median of {rounds} round(s){busy}; load average "
                        f"{extra['load_average_before']} -> {extra['load_average_after']}", rows + skipped, columns)
    print(f"Spearman against local-baai-rerank torch float32 over {fidelity['queries']} queries of "
          f"{fidelity['candidates']} candidates; gate: the package's verdict at the precision's default "
          "(fp32 0.999, bf16 0.99, int8 0.97 Spearman on its calibration pairs)")
    print()
    _common.print_table("Memory", [
        {"figure": f"RSS growth {m['reranker']}, {m['calls']} calls", "value": m["growth_fraction"],
         "detail": f"{m['growth_mib']:+.1f} MiB of {m['rss_before_mib']:.0f}",
         "target": "< 1%" if m["key"] == OURS else ""} for m in memory
    ], [("figure", "figure", ""), ("value", "value", ".4f"), ("detail", "detail", ""), ("target", "target", "")])
    by = {row["key"]: row for row in rows}
    first = counts[0]
    targets: dict[str, Any] = {}
    if OURS in by:
        ours = by[OURS]
        targets.update({
            "rerank_candidates": first, "rerank_vs_cross_encoder": 5.0, "rerank_vs_cross_encoder_x": ours[f"x_{first}"],
            "rerank_vs_cross_encoder_met": ours[f"x_{first}"] >= 5.0,
            "spearman": 0.99, "spearman_met": ours["spearman_mean"] >= 0.99,
        })
    ours_memory = next((m for m in memory if m["key"] == OURS), None)
    if ours_memory:
        targets.update({"rss_growth_fraction": 0.01, "rss_growth_met": ours_memory["growth_fraction"] < 0.01})
    for name, value in targets.items():
        print(f"target {name}: {value}")
    payload = {
        "benchmark": "rerank", "quick": args.quick, "rounds": rounds, "model_kind": args.model,
        "machine": _common.machine_info(**bench.dtypes),
        "model": {"shape": "BERT hidden 384, 6 layers, 12 heads, intermediate 1536, num_labels=1",
                  "weights": "all-MiniLM-L6-v2 encoder, random seeded head"} if args.model == "minilm" else
                 {"shape": "tiny random BERT, hidden 64, 2 layers", "weights": "random, sharpened"},
        "auto": bench.choices.get(OURS), "results": rows, "skipped": skipped, "fidelity": fidelity,
        "memory": memory, "targets": targets, **extra,
    }
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, f"Reranking latency, {'MiniLM-L6-shaped' if args.model == 'minilm' else 'tiny'} "
                                  f"cross-encoder on CPU{busy}", [
        (f"ms per query, {count} candidates", [r["method"] for r in rows], [r[f"ms_{count}"] for r in rows])
        for count in counts
    ])


if __name__ == "__main__":
    _common.run_main(main)
