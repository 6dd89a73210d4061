"""Run with: .venv/bin/python benchmarks/embed.py [--quick] [--out PATH] [--plot PATH.png]

Ingest speed of `local-baai` on each backend against LanceDB's built-in `sentence-transformers` function.

On the same texts (paragraphs of Python's reference topics) in one process, with the
packaged all-MiniLM-L6-v2 (or, with ``--model tiny``, a tiny random one for smoke runs),
it times ``table.add`` of all texts (LanceDB embeds them in batches of 64) for:

* LanceDB's built-in ``sentence-transformers`` function (the 1.0 baseline),
* ``local-baai`` on torch in its own "auto" dtype (the previous default) and in float32,
* ``local-baai`` with ``backend="auto"`` (the default; the table says what it resolved to),
* ``local-baai`` on ONNX Runtime and OpenVINO in float32, and in int8 with
  ``min_fidelity=0`` (so they run, and show their figures, even where they fail the gate),
* OpenVINO bf16, only where OpenVINO runs bf16 natively on this CPU (else a skipped row),

and raw ``SentenceTransformer.encode`` (no LanceDB) for reference, in interleaved rounds
after a warm-up of each. The first use of each (where a backend exports the model, once per
machine, and measures its fidelity gate) happens before the rounds and is reported apart.

Reported per contender: texts/s (median round) and the ratio to the built-in function,
model loads during the timed calls (must be 0), fidelity against torch float32 on this
corpus (lowest cosine between the two vectors of a text; mean top-10 neighbour overlap with
passages and short questions as queries), the verdict of the package's fidelity gate at the
precision's default threshold, the time from a fresh process to its first vector (and
whether that process imported torch), and the median latency of one short query.
``--busy N`` runs N busy-loop processes during the timed parts.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import coldstart
import numpy as np

TOP_K = 10
BUILTIN = _common.BUILTIN_KEY
REFERENCE = _common.REFERENCE_KEY
ENCODE = "st-encode"
ENCODE_LABEL = "sentence-transformers encode fp32 (no LanceDB)"
BATCH = 64  # LanceDB's batch for table.add (EmbeddingFunction.batch_size default)
SHORT_QUERY = "short query"


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method (default 3; quick 1)")
    parser.add_argument("--limit", type=int, default=None, help="texts to embed (default: the whole corpus; quick 16)")
    parser.add_argument("--queries", type=int, default=None,
                        help="fidelity queries of each kind (default 200; quick 4)")
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm",
                        help="the packaged all-MiniLM-L6-v2 (default) or a tiny random bge-shaped model "
                             "(fast exports, for smoke runs)")
    parser.add_argument("--query-calls", type=int, default=None,
                        help="timed one-query calls per contender (default 50; quick 10)")
    parser.add_argument("--cold-repeats", type=int, default=None,
                        help="fresh processes per contender for the cold start (default 3; quick 1, and only "
                             "for the contenders that may run torch-free; 0: skip)")
    parser.add_argument("--gemm-size", type=int, default=None,
                        help="matrix size of the matmul peak measurement (default 2048; quick 256; a bf16 "
                             "GEMM without native bf16 takes minutes at 2048)")
    _common.contender_option(parser)


def main() -> int:
    args = _common.parse_args("embed", __doc__, _options)
    environment = _common.backend_environment()
    contenders, skipped = _common.pick_contenders(args.contenders, args.quick)
    rounds = args.rounds or (1 if args.quick else 3)
    query_calls = args.query_calls or (10 if args.quick else 50)
    cold_repeats = (1 if args.quick else 3) if args.cold_repeats is None else args.cold_repeats
    texts = _common.corpus(args.limit or (16 if args.quick else None))
    model_dir = _model(args.model)
    bench = EmbedBench(model_dir, texts, contenders)
    print(f"{len(texts)} texts, {bench.tokens} tokens; load average {_common.load_average()}", flush=True)
    bench.prepare()
    print(f"auto resolved to: {bench.choices['auto']['backend']} {bench.choices['auto']['dtype']} "
          f"({bench.choices['auto']['reason']})" if "auto" in bench.choices else "auto not run", flush=True)
    gemm = (args.gemm_size or 256, 3) if args.quick else (args.gemm_size or 2048, 5)
    peaks = _common.gemm_peaks(*gemm)
    load_before = _common.load_average()
    with _common.busy(args.busy):
        timings = _common.interleaved(bench.methods(), rounds, bench.warmups())
        latency = bench.query_latency(query_calls)
        # quick runs skip the torch contenders' cold start (a torch import is ~10 s on a small host)
        cold_contenders = [c for c in contenders if not args.quick or _common.runs_torch_free(c)]
        cold = coldstart.measure(cold_contenders, model_dir, cold_repeats) if cold_repeats else []
    load_after = _common.load_average()
    # measured again after the rounds: on a shared machine the best of both is the peak
    again = _common.gemm_peaks(*gemm)
    peaks = {dtype: max(flops, again[dtype]) for dtype, flops in peaks.items()}
    fidelity = bench.fidelity(args.queries or (4 if args.quick else 200))
    rows = bench.rows(timings, peaks, fidelity, latency, {row["key"]: row for row in cold})
    _report(args, bench, rows, skipped, {"gemm_size": gemm[0], **peaks}, fidelity, rounds,
            {"environment": environment, "busy": args.busy, "load_average_before": load_before,
             "load_average_after": load_after, "cold_repeats": cold_repeats, "query_calls": query_calls,
             "cold_start": cold})
    return 0


def _model(kind: str) -> str:
    if kind == "minilm":
        return _common.minilm_path()
    from lancedb_baai import testing

    directory = Path(tempfile.mkdtemp(prefix="bench-embed-model-")) / "tiny-bge"
    testing.build_st_embedder(directory, hidden=64, layers=2, max_length=128, pooling="mean", seed=7)
    return str(testing.sharpen(directory, "AutoModel", 0.5, seed=7))


class EmbedBench:
    """The contenders embedding the same texts, and what each produced."""

    def __init__(self, model_dir: str, texts: list[str], contenders: list[_common.Contender]) -> None:
        import lancedb
        from lancedb.embeddings import get_registry
        from sentence_transformers import SentenceTransformer

        self.counter = _common.STLoadCounter.install()
        self.model_dir = model_dir
        self.texts = texts
        self.contenders = {c.key: c for c in contenders}
        self.st = SentenceTransformer(model_dir, device="cpu")
        self.lengths = _common.token_lengths(model_dir, texts, self.st.max_seq_length)
        self.tokens = sum(self.lengths)
        self.shape = _common.encoder_shape(self.st[0].auto_model)
        self.db = lancedb.connect(tempfile.mkdtemp(prefix="bench-embed-"))
        registry = get_registry()
        self.functions = {}
        for c in contenders:
            if c.options is None:
                self.functions[c.key] = registry.get("sentence-transformers").create(name=model_dir, device="cpu")
            else:
                self.functions[c.key] = registry.get("local-baai").create(name=model_dir, device="cpu", **c.options)
        self.dims = self.functions[REFERENCE].ndims()  # from config files
        self.labels = {ENCODE: ENCODE_LABEL, **{c.key: c.label for c in contenders}}
        self.dtypes = {ENCODE: "float32", BUILTIN: "float32"}
        self.choices: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, dict[str, Any] | None] = {}
        self.first_use: dict[str, float] = {}
        self.loads: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.st_vectors: np.ndarray | None = None

    def prepare(self) -> None:
        """First use of each contender, untimed by the rounds: export, gate and load happen here."""
        for key, fn in self.functions.items():
            start = time.perf_counter()
            fn.generate_embeddings(self.texts[:2])
            self.first_use[key] = time.perf_counter() - start
            if key == BUILTIN:
                self.choices[key] = {"backend": "sentence-transformers", "dtype": "float32", "reason": "built-in"}
            else:
                choice = fn.backend_choice()
                self.choices[key] = {"backend": choice.backend, "dtype": choice.dtype, "reason": choice.reason}
                self.dtypes[key] = choice.dtype
                self.gates[key] = fn.loaded().fidelity
            print(f"  first use: {self.labels[key]}: {self.first_use[key]:.1f}s -> "
                  f"{self.choices[key]['backend']} {self.choices[key]['dtype']}", flush=True)

    def methods(self) -> dict[str, Any]:
        """The timed calls, each counting the model loads it causes."""
        methods = {ENCODE: self._encode}
        for key in self.functions:
            methods[key] = lambda key=key: self._ingest(key, self.texts)
        return {key: self._counted(key, fn) for key, fn in methods.items()}

    def warmups(self) -> dict[str, Any]:
        sample = self.texts[:32]
        warm = {ENCODE: lambda: self.st.encode(sample, batch_size=32)}
        for key in self.functions:
            warm[key] = lambda key=key: self._ingest(key, sample)
        return warm

    def _counted(self, key: str, fn: Any) -> Any:
        def run() -> None:
            start = self.counter.count + _common.package_loads()
            fn()
            self.loads[key] = self.loads.get(key, 0) + self.counter.count + _common.package_loads() - start
            self.calls[key] = self.calls.get(key, 0) + 1

        return run

    def _encode(self) -> None:
        self.st_vectors = self.st.encode(self.texts, batch_size=32, normalize_embeddings=True)

    def _table_name(self, key: str) -> str:
        return f"t_{key.replace('-', '_')}"

    def _ingest(self, key: str, texts: list[str]) -> None:
        import pyarrow as pa
        from lancedb.embeddings import EmbeddingFunctionConfig

        fn = self.functions[key]
        schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string()),
                            pa.field("vector", pa.list_(pa.float32(), self.dims))])
        table = self.db.create_table(self._table_name(key), schema=schema, mode="overwrite",
                                     embedding_functions=[EmbeddingFunctionConfig(
                                         source_column="text", vector_column="vector", function=fn)])
        table.add(pa.table({"id": np.arange(len(texts)), "text": texts}))

    def stored_vectors(self, key: str) -> np.ndarray:
        """The vectors the last timed ``table.add`` of ``key`` wrote, in text order."""
        if key == ENCODE:
            return np.asarray(self.st_vectors)
        table = self.db.open_table(self._table_name(key)).to_arrow().sort_by("id")
        column = table["vector"].combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1)

    def query_latency(self, calls: int, per_round: int = 10) -> dict[str, dict[str, float]]:
        """ms of one warm ``compute_query_embeddings(SHORT_QUERY)``, contenders alternating every ``per_round`` calls."""
        for fn in self.functions.values():
            for _ in range(5):
                fn.compute_query_embeddings(SHORT_QUERY)
        seconds: dict[str, list[float]] = {key: [] for key in self.functions}
        while min(len(s) for s in seconds.values()) < calls:
            for key, fn in self.functions.items():
                gc.collect()
                for _ in range(min(per_round, calls - len(seconds[key]))):
                    start = time.perf_counter()
                    fn.compute_query_embeddings(SHORT_QUERY)
                    seconds[key].append(time.perf_counter() - start)
        result = {}
        for key, values in seconds.items():
            ms = sorted(1000 * v for v in values)
            result[key] = {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
                           "min_ms": ms[0], "calls": len(ms)}
            print(f"  one query: {self.labels[key]}: median {result[key]['median_ms']:.2f} ms", flush=True)
        return result

    def fidelity(self, n_queries: int) -> dict[str, Any]:
        """How far each contender lands from torch float32 on this corpus: neighbours and cosines."""
        reference = self.stored_vectors(REFERENCE)
        passages = np.linspace(0, len(self.texts) - 1, min(n_queries, len(self.texts))).astype(int)
        questions = _common.questions(n_queries)
        q_reference = np.stack(self.functions[REFERENCE].compute_query_embeddings(questions))
        per_method = {}
        for key in [ENCODE, *self.functions]:
            vectors = self.stored_vectors(key)
            cos = np.sum(vectors * reference, axis=1) / (
                np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
            passage_overlap = _overlap(vectors[passages], reference[passages], vectors, reference, exclude=passages)
            if key == ENCODE:
                q_vectors = self.st.encode(questions, normalize_embeddings=True)
            else:
                q_vectors = np.stack(self.functions[key].compute_query_embeddings(questions))
            question_overlap = _overlap(q_vectors, q_reference, vectors, reference)
            per_method[key] = {
                "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                "top10_overlap_passages": float(passage_overlap.mean()),
                "top10_overlap_questions": float(question_overlap.mean()),
                "top10_overlap_mean": float(np.concatenate([passage_overlap, question_overlap]).mean()),
                "top10_overlap_min": float(min(passage_overlap.min(), question_overlap.min())),
            }
        result = {"reference": "local-baai torch float32", "top_k": TOP_K, "passage_queries": len(passages),
                  "question_queries": len(questions), "methods": per_method}
        # contract check: local-baai float32 reproduces sentence-transformers float32
        result["min_cosine_fp32_vs_sentence_transformers"] = per_method[ENCODE]["min_cosine"]
        return result

    def rows(self, timings: _common.Timings, peaks: dict[str, float], fidelity: dict[str, Any],
             latency: dict[str, dict[str, float]], cold: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        from lancedb_baai.models import fidelity as _fidelity

        flops = self.shape.flops(self.lengths)
        base = len(self.texts) / timings.median(BUILTIN)
        rows = []
        for key in timings.seconds:
            seconds = timings.median(key)
            dtype = self.dtypes[key]
            achieved = flops / seconds
            figures = fidelity["methods"][key]
            gate = self.gates.get(key)
            choice = self.choices.get(key, {"backend": "sentence-transformers", "dtype": "float32",
                                            "reason": "no LanceDB"})
            if gate is None:
                verdict = "reference" if key == REFERENCE else "n/a"
            else:
                verdict = "pass" if _fidelity.passes(gate, dtype, None) else "fail"
            row = {
                "key": key, "method": self.labels[key], "backend": choice["backend"], "dtype": dtype,
                "resolved": f"{choice['backend']} {dtype}", "reason": choice["reason"],
                "options": (self.contenders[key].options if key in self.contenders else None),
                "seconds": seconds, "seconds_best": timings.best(key), "seconds_all": timings.seconds[key],
                "texts_per_s": len(self.texts) / seconds, "texts_per_s_best": len(self.texts) / timings.best(key),
                "tokens_per_s": self.tokens / seconds, "vs_builtin": len(self.texts) / seconds / base,
                "loads_during_timing": self.loads[key], "loads_per_call": self.loads[key] / self.calls[key],
                "gflop_per_s": achieved / 1e9,
                "peak_fraction": achieved / peaks[dtype] if dtype in peaks else None,
                "min_cosine": figures["min_cosine"], "top10_overlap": figures["top10_overlap_mean"],
                "top10_overlap_passages": figures["top10_overlap_passages"],
                "top10_overlap_questions": figures["top10_overlap_questions"],
                "gate": verdict, "gate_figures": gate,
                "gate_threshold": _fidelity.threshold(dtype, None) if gate is not None else None,
                "gate_score": gate["score"] if gate else None,
                "first_use_s": self.first_use.get(key),
            }
            if key in latency:
                row["query_ms"] = latency[key]["median_ms"]
                row["query_latency"] = latency[key]
            if key in cold:
                row["cold_start_s"] = cold[key]["first_vector_s"]
                row["cold_start_after_lancedb_import_s"] = cold[key]["after_lancedb_import_s"]
                row["cold_start_import_lancedb_s"] = cold[key]["import_lancedb_s"]
                row["torch_free"] = cold[key]["torch_free"]
                row["cold_start_modules"] = cold[key]["modules"]
            rows.append(row)
        return rows


def _overlap(q_a: np.ndarray, q_b: np.ndarray, docs_a: np.ndarray, docs_b: np.ndarray,
             exclude: np.ndarray | None = None) -> np.ndarray:
    """Per query, the share of its top-k neighbours that two embeddings of the corpus agree on."""
    k = min(TOP_K, len(docs_a) - (1 if exclude is not None else 0))
    tops = []
    for queries, docs in ((q_a, docs_a), (q_b, docs_b)):
        scores = queries @ docs.T
        if exclude is not None:
            scores[np.arange(len(exclude)), exclude] = -np.inf  # a passage is not its own neighbour
        tops.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
    return np.array([len(set(a) & set(b)) / k for a, b in zip(*tops)])


COLUMNS = [("method", "method", ""), ("resolved", "runs as", ""), ("texts_per_s", "texts/s", ".1f"),
           ("vs_builtin", "x built-in", ".2f"), ("min_cosine", "min cos", ".5f"), ("top10_overlap", "top-10", ".3f"),
           ("gate_score", "gate score", ".3f"), ("gate", "gate", ""), ("loads_during_timing", "loads", "d"),
           ("first_use_s", "first use s", ".1f"), ("cold_start_s", "cold s", ".2f"),
           ("cold_start_after_lancedb_import_s", "after import s", ".2f"), ("torch_free", "torch-free", ""),
           ("query_ms", "1 query ms", ".2f"), ("skipped", "skipped", "")]


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue #31's targets, met or not on this host (its CPU class is in the JSON's machine record)."""
    by = {row["key"]: row for row in rows}
    auto = by.get("auto")
    int8 = [r for r in rows if r["dtype"] == "int8"]
    exact = [r for r in rows if r["key"] in ("onnx-fp32", "openvino-fp32")]
    local = [r for r in rows if r.get("options") is not None and r["backend"] in ("onnx", "openvino")]
    targets: dict[str, Any] = {}
    if auto:
        targets["auto_vs_builtin"] = {"target": ">= 3x at top-10 >= 0.99", "x": auto["vs_builtin"],
                                      "top10": auto["top10_overlap"],
                                      "met": auto["vs_builtin"] >= 3 and auto["top10_overlap"] >= 0.99}
        targets["auto_peak_fraction"] = {"target": ">= 0.85 of the fp32 GEMM ceiling (here: table.add, batches "
                                                   f"of {BATCH})", "fraction": auto["peak_fraction"],
                                         "met": (auto["peak_fraction"] or 0) >= 0.85}
    # the fp32 default: what "auto" runs where it is fp32, else the fp32 export it would run
    fp32 = (auto if auto and auto["dtype"] == "float32" else None) or by.get("openvino-fp32") or by.get("onnx-fp32")
    if int8 and fp32:
        passing = [r for r in int8 if r["gate"] == "pass"]
        best = max(passing or int8, key=lambda r: r["texts_per_s"])
        targets["int8"] = {"target": ">= 1.5x the fp32 default's texts/s at top-10 >= 0.97 on the gate's set",
                           "fp32": fp32["key"], "best": best["key"], "x_fp32": best["texts_per_s"] / fp32["texts_per_s"],
                           "gate_score": best["gate_score"], "gate": best["gate"],
                           "x_fp32_each": {r["key"]: r["texts_per_s"] / fp32["texts_per_s"] for r in int8},
                           "met": any(r["texts_per_s"] >= 1.5 * fp32["texts_per_s"] and r["gate"] == "pass"
                                      for r in int8)}
    if exact:
        targets["fp32_exact"] = {"target": "top-10 >= 0.999", "x": {r["key"]: r["vs_builtin"] for r in exact},
                                 "met": all(r["top10_overlap"] >= 0.999 for r in exact)}
    if local and all("cold_start_s" in r for r in local):
        targets["cold_start"] = {"target": "<= 2.5 s", "s": {r["key"]: r["cold_start_s"] for r in local},
                                 "met": {r["key"]: r["cold_start_s"] <= 2.5 for r in local}}
    if auto and "query_ms" in auto:
        targets["one_query"] = {"target": "<= 3 ms", "auto_ms": auto["query_ms"], "met": auto["query_ms"] <= 3}
    return targets


def _report(args: argparse.Namespace, bench: EmbedBench, rows: list[dict[str, Any]], skipped: list[dict[str, Any]],
            peaks: dict[str, float], fidelity: dict[str, Any], rounds: int, extra: dict[str, Any]) -> None:
    print()
    busy = f", {args.busy} busy-loop process(es)" if args.busy else ""
    _common.print_table(
        f"Embedding {len(bench.texts)} texts ({bench.tokens} tokens) via table.add (batches of {BATCH}), "
        f"median of {rounds} round(s){busy}; load average {extra['load_average_before']} -> "
        f"{extra['load_average_after']}", rows + skipped, COLUMNS)
    print(f"fidelity against local-baai torch float32 over {fidelity['passage_queries']} passage and "
          f"{fidelity['question_queries']} question queries; gate: the package's own verdict at the "
          "precision's default threshold (fp32 0.999, bf16 0.99, int8 0.97 top-10 overlap on its calibration set, "
          "and min cosine 0.999 / 0.99 / 0.9)")
    bf16 = f"{peaks['bfloat16'] / 1e9:.1f} GFLOP/s" if "bfloat16" in peaks else "not measured (no native bf16)"
    print(f"matmul peak ({peaks['gemm_size']}^2 GEMM): fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {bf16}; model: {bench.shape.linear_params / 1e6:.2f}M "
          f"linear weights/token, {bench.shape.flops(bench.lengths) / bench.tokens / 1e6:.1f} MFLOP/token")
    targets = _targets(rows)
    for name, target in targets.items():
        print(f"target {name}: {target}")
    payload = {
        "benchmark": "embed", "quick": args.quick, "rounds": rounds, "model_kind": args.model,
        "machine": _common.machine_info(**bench.dtypes),
        "model": {"path": bench.model_dir, "linear_params": bench.shape.linear_params,
                  "layers": bench.shape.layers, "hidden": bench.shape.hidden,
                  "max_seq_length": bench.st.max_seq_length,
                  "flops_total": bench.shape.flops(bench.lengths)},
        "corpus": {"texts": len(bench.texts), "tokens": bench.tokens, "mean_tokens": bench.tokens / len(bench.texts)},
        "auto": bench.choices.get("auto"),
        "peak_flop_per_s": peaks, "results": rows, "skipped": skipped, "fidelity": fidelity,
        "targets": targets, **extra,
    }
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, f"Embedding {len(bench.texts)} texts via table.add, {Path(bench.model_dir).name} "
                                  f"on CPU{busy}", [
        ("texts/s (median round)", [r["method"] for r in rows], [r["texts_per_s"] for r in rows]),
        ("x built-in", [r["method"] for r in rows], [r["vs_builtin"] for r in rows]),
    ])


if __name__ == "__main__":
    _common.run_main(main)
