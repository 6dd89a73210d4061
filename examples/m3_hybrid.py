"""Dense, multi-vector (ColBERT) and hybrid search with bge-m3 over Python's reference docs.

Run with: python examples/m3_hybrid.py [--limit 300] [--model BAAI/bge-m3] [--query "..."] [--tiny]

One LanceDB table gets two embedding columns from the same text: ``vector`` (the dense
vector, ``local-baai``) and ``colbert`` (one vector per token, ``local-baai-m3-colbert``).
Both come out of one bge-m3 forward pass per batch. The script then runs a dense search,
a multi-vector (MaxSim) search and a hybrid (dense + full-text) search reranked with
:class:`~lancedb_baai.BGEM3Reranker`.

Without BAAI/bge-m3 in the local Hugging Face cache it builds a tiny random m3-shaped
model instead and says so: every code path is the real one, the rankings are noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lancedb
from lancedb.embeddings import EmbeddingFunctionConfig, get_registry
from lancedb.index import FTS
from lancedb.pydantic import LanceModel, MultiVector, Vector

import lancedb_baai
from lancedb_baai import testing
from lancedb_baai import BGEM3Reranker, fill_multivectors


def pick_model(name: str, workdir: Path, tiny: bool) -> str:
    """``name`` if its files are here (or it is a directory), else a tiny random bge-m3."""
    from huggingface_hub import try_to_load_from_cache

    if tiny:
        print("--tiny: using a tiny random bge-m3-shaped model (same files and code paths, meaningless rankings).")
    elif Path(name).expanduser().is_dir() or isinstance(try_to_load_from_cache(name, "colbert_linear.pt"), str):
        return name
    else:
        print(f"{name} is not in the local Hugging Face cache: using a tiny random bge-m3-shaped model "
              "(same files and code paths, meaningless rankings).")
    return str(testing.build_m3_model(workdir / "tiny" / "bge-m3", hidden=64, max_length=256))


def build_table(db: lancedb.DBConnection, model: str):
    """A table whose dense and ColBERT columns are both embedded from ``text``."""
    dense = get_registry().get("local-baai").create(name=model)
    colbert = get_registry().get("local-baai-m3-colbert").create(name=model)

    class Paragraph(LanceModel):
        topic: str
        text: str
        vector: Vector(dense.ndims())
        colbert: MultiVector(colbert.ndims())

    # A LanceModel ties each function to its own source field, so two functions on one
    # text column are declared as configs.
    functions = [EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=dense),
                 EmbeddingFunctionConfig(source_column="text", vector_column="colbert", function=colbert)]
    return db.create_table("paragraphs", schema=Paragraph, embedding_functions=functions, mode="overwrite")


def show(title: str, results, score: str) -> None:
    print(f"\n{title}")
    for topic, text, value in zip(results["topic"].to_pylist(), results["text"].to_pylist(),
                                  results[score].to_pylist()):
        print(f"  {score}={value:8.4f}  [{topic}] {text[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="paragraphs to index (default 300)")
    parser.add_argument("--model", default="BAAI/bge-m3", help="hub id or local bge-m3 directory")
    parser.add_argument("--query", default="how do I sort a list in place")
    parser.add_argument("--top", type=int, default=5, help="results per search (default 5)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model even if bge-m3 is here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        model = pick_model(args.model, Path(workdir), args.tiny)
        table = build_table(lancedb.connect(Path(workdir) / "db"), model)
        rows = testing.python_reference_paragraphs(limit=args.limit)

        engine = table.embedding_functions["vector"].function.engine()
        start, passes = time.perf_counter(), engine.forward_passes
        table.add(fill_multivectors(table, rows))  # the ColBERT column first; the dense one reuses its pass
        seconds = time.perf_counter() - start
        print(f"indexed {len(rows)} paragraphs in {seconds:.2f}s ({len(rows) / seconds:.0f} texts/s), "
              f"{engine.forward_passes - passes} forward passes for two embedding columns")
        table.create_index("text", config=FTS())

        top = args.top
        show(f"dense search: {args.query!r}",
             table.search(args.query, vector_column_name="vector").limit(top).to_arrow(), "_distance")
        show(f"multi-vector (ColBERT MaxSim) search: {args.query!r}",
             table.search(args.query, vector_column_name="colbert").distance_type("cosine").limit(top).to_arrow(),
             "_distance")
        reranker = BGEM3Reranker(model)
        hybrid = (table.search(args.query, query_type="hybrid", vector_column_name="vector")
                  .limit(top).rerank(reranker=reranker).to_arrow())
        show(f"hybrid search reranked by bge-m3 (dense 0.4, sparse 0.2, ColBERT 0.4): {args.query!r}",
             hybrid, "_relevance_score")
        print()
        print(lancedb_baai.cache_info())


if __name__ == "__main__":
    main()
