"""examples/quickstart.py, the README's main job, end to end in a fresh process (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "examples" / "quickstart.py"
QUERIES = 3  # the script's questions


def _run(tmp_path: Path, *args: str, limit: str = "60") -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(SCRIPT), "--limit", limit, "--db", str(tmp_path / "db"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_quickstart_reranks_with_a_local_reranker(tmp_path, cross_encoder):
    out = _run(tmp_path, "--reranker", str(cross_encoder))
    assert "indexed 60 paragraphs" in out
    assert out.count("Q: ") == QUERIES
    assert out.count("relevance ") == 3 * QUERIES and "distance " not in out
    assert "reranked by" in out and "not reranked" not in out
    # one embedder and one reranker, each loaded once, and listed by the cache report
    assert "2 engines" in out and " rerank " in out and " embed " in out


@pytest.mark.slow
def test_quickstart_without_a_reranker_says_how_to_get_one(tmp_path):
    out = _run(tmp_path)
    assert "using the packaged all-MiniLM-L6-v2" in out
    assert out.count("relevance ") == 3 * QUERIES and "hybrid search" in out
    assert "not reranked by a cross-encoder" in out and "lancedb-baai download BAAI/bge-reranker-base" in out
    # --limit spreads over all topics: the first 60 paragraphs alphabetically are all assert/assignment/async
    topics = {line[3:].split("]")[0] for line in out.splitlines() if line.startswith("  [")}
    assert topics - {"assert", "assignment", "async"}


def _first_answers(out: str) -> dict[str, str]:
    """Each question's first hit as printed: "[topic] relevance x  text"."""
    lines = out.splitlines()
    return {line[3:]: lines[i + 1] for i, line in enumerate(lines) if line.startswith("Q: ")}


@pytest.mark.slow
def test_quickstart_answers_its_own_questions(tmp_path):
    """On the whole corpus with the packaged MiniLM, each question's first hit is the paragraph it asks for."""
    first = _first_answers(_run(tmp_path, limit="0"))
    assert len(first) == QUERIES
    exceptions, with_statement, sorting = first.values()
    assert "try:" in exceptions and "except" in exceptions, exceptions
    assert 'The "with" statement' in with_statement, with_statement
    assert "sort" in sorting and "list" in sorting, sorting
