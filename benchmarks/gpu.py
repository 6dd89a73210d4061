"""Run with: .venv/bin/python benchmarks/gpu.py [--quick] [--out PATH] [--plot PATH.png]

Embedding and reranking on a CUDA GPU across batch sizes 32, 64, 128, 256 and 512.

Baselines are sentence-transformers in float16 (``model.half()``): ``SentenceTransformer
.encode`` for embeddings and LanceDB's ``CrossEncoderReranker`` (its CrossEncoder halved)
for reranking. ``local-baai`` and ``BAAIReranker`` run with their default dtype (float16
on CUDA). Same texts as benchmarks/embed.py and benchmarks/rerank.py (paragraphs of
Python's reference topics, the packaged all-MiniLM-L6-v2 and a MiniLM-L6-shaped
cross-encoder built from it), interleaved rounds after a warm-up at each batch size.
``local-baai`` batches are also capped by a padded-token budget, so its column
"passes" gives the forward passes one embedding call really made.

On a machine without CUDA it prints "no CUDA device: skipped", writes a JSON saying so and
exits 0. ``--device cpu`` runs the same measurements on the CPU to check the script.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import _common

BATCH_SIZES = (32, 64, 128, 256, 512)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else skip)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; quick 1)")


def main() -> int:
    import torch

    args = _common.parse_args("gpu", __doc__, _options)
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("no CUDA device: skipped", flush=True)
        _common.write_json(args.out, {"benchmark": "gpu", "quick": args.quick, "skipped": True,
                                      "reason": "no CUDA device", "machine": _common.machine_info()})
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    batch_sizes = (4, 8) if args.quick else BATCH_SIZES
    texts = _common.corpus(8 if args.quick else None)
    counts = (4,) if args.quick else (50, 200)
    queries = 1 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        bench = GpuBench(device, texts, _common.build_minilm_cross_encoder(Path(tmp) / "ms-marco-MiniLM-L-6-shaped"))
        rows = [bench.measure(batch, rounds, counts, queries) for batch in batch_sizes]
        _report(args, bench, rows, rounds, counts)
    return 0


class GpuBench:
    """sentence-transformers halved vs the package's default dtype, on one device."""

    def __init__(self, device: str, texts: list[str], cross_encoder_dir: str) -> None:
        from lancedb.rerankers import CrossEncoderReranker
        from sentence_transformers import SentenceTransformer

        from lancedb_baai import BAAIEmbeddings

        self.device = device
        self.texts = texts
        self.model_dir = _common.minilm_path()
        self.cross_encoder_dir = cross_encoder_dir
        self.st = SentenceTransformer(self.model_dir, device=device).half()
        self.tokens = sum(_common.token_lengths(self.model_dir, texts, self.st.max_seq_length))
        self.dtype = BAAIEmbeddings(name=self.model_dir, device=device).engine_key().dtype
        self.questions = _common.questions(50)
        self.corpus = _common.corpus()
        self.cross_encoder = CrossEncoderReranker(model_name=cross_encoder_dir, device=device)
        self.cross_encoder.model.half()

    def candidates(self, query_index: int, count: int) -> tuple[str, Any]:
        import numpy as np
        import pyarrow as pa

        corpus = self.corpus
        start = (query_index * 97) % len(corpus)
        texts = [corpus[(start + i) % len(corpus)] for i in range(count)]
        return self.questions[query_index % len(self.questions)], pa.table(
            {"text": texts, "_distance": pa.array(np.linspace(0.1, 1.0, count), pa.float32())})

    def measure(self, batch: int, rounds: int, counts: tuple[int, ...], queries: int) -> dict[str, Any]:
        from lancedb_baai import BAAIEmbeddings, BAAIReranker

        ours = BAAIEmbeddings(name=self.model_dir, device=self.device, batch_size=batch)
        theirs_rerank = self.cross_encoder
        theirs_rerank.batch_size = batch  # read on each call; one load serves every batch size
        ours_rerank = BAAIReranker(self.cross_encoder_dir, device=self.device, batch_size=batch)
        methods = {
            "st_embed": lambda: self.st.encode(self.texts, batch_size=batch, normalize_embeddings=True),
            "ours_embed": lambda: ours.generate_embeddings(self.texts),
        }
        for count in counts:
            work = [self.candidates(i, count) for i in range(queries)]
            methods[f"st_rerank_{count}"] = lambda r=theirs_rerank, w=work: [r.rerank_vector(q, t) for q, t in w]
            methods[f"ours_rerank_{count}"] = lambda r=ours_rerank, w=work: [r.rerank_vector(q, t) for q, t in w]
        print(f"batch size {batch}", flush=True)
        passes_before = ours.engine().forward_passes  # the engine is shared by every batch size
        timings = _common.interleaved(methods, rounds)
        passes = ours.engine().forward_passes - passes_before
        ours_embed_calls = rounds + 1  # the warm-up call counts too
        row: dict[str, Any] = {
            "batch_size": batch,
            "st_texts_per_s": len(self.texts) / timings.best("st_embed"),
            "ours_texts_per_s": len(self.texts) / timings.best("ours_embed"),
            "ours_tokens_per_s": self.tokens / timings.best("ours_embed"),
            "ours_passes_per_call": passes / ours_embed_calls,
        }
        row["embed_x"] = row["ours_texts_per_s"] / row["st_texts_per_s"]
        for count in counts:
            row[f"st_rerank_{count}_ms"] = 1000 * timings.best(f"st_rerank_{count}") / queries
            row[f"ours_rerank_{count}_ms"] = 1000 * timings.best(f"ours_rerank_{count}") / queries
            row[f"rerank_{count}_x"] = row[f"st_rerank_{count}_ms"] / row[f"ours_rerank_{count}_ms"]
        row["seconds_all"] = timings.seconds
        return row


def _report(args: argparse.Namespace, bench: GpuBench, rows: list[dict[str, Any]], rounds: int,
            counts: tuple[int, ...]) -> None:
    import torch

    columns = [("batch_size", "batch", "d"), ("st_texts_per_s", "ST fp16 texts/s", ".0f"),
               ("ours_texts_per_s", f"local-baai {bench.dtype} texts/s", ".0f"), ("embed_x", "x", ".2f"),
               ("ours_passes_per_call", "passes", ".0f")]
    for count in counts:
        columns += [(f"st_rerank_{count}_ms", f"CrossEnc fp16 ms@{count}", ".1f"),
                    (f"ours_rerank_{count}_ms", f"BAAIReranker ms@{count}", ".1f"), (f"rerank_{count}_x", "x", ".2f")]
    print()
    title = f"{len(bench.texts)} texts ({bench.tokens} tokens) on {bench.device}, best of {rounds} round(s)"
    _common.print_table(title, rows, columns)
    device_name = torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else _common.cpu_model()
    payload = {
        "benchmark": "gpu", "quick": args.quick, "skipped": False, "device": bench.device, "device_name": device_name,
        "rounds": rounds, "candidates": list(counts),
        "machine": _common.machine_info(**{"sentence-transformers": "float16", "local-baai": bench.dtype}),
        "corpus": {"texts": len(bench.texts), "tokens": bench.tokens}, "results": rows,
    }
    _common.write_json(args.out, payload)
    _common.write_plot(args.plot, f"all-MiniLM-L6-v2 on {device_name}", [
        ("texts/s: sentence-transformers fp16 | local-baai", [f"b={r['batch_size']} {who}" for r in rows
                                                             for who in ("ST", "ours")],
         [r[k] for r in rows for k in ("st_texts_per_s", "ours_texts_per_s")]),
        (f"rerank ms/query at {counts[-1]} candidates", [f"b={r['batch_size']} {who}" for r in rows
                                                         for who in ("CrossEnc", "ours")],
         [r[k] for r in rows for k in (f"st_rerank_{counts[-1]}_ms", f"ours_rerank_{counts[-1]}_ms")]),
    ])


if __name__ == "__main__":
    _common.run_main(main)
