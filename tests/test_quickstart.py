"""examples/quickstart.py, the README's main job, end to end in a fresh process (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "examples" / "quickstart.py"
QUERIES = 3  # the script's questions


def _run(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(SCRIPT), "--limit", "60", "--db", str(tmp_path / "db"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_quickstart_reranks_with_a_local_reranker(tmp_path, cross_encoder):
    out = _run(tmp_path, "--reranker", str(cross_encoder))
    assert "indexed 60 paragraphs" in out
    assert out.count("Q: ") == QUERIES
    assert out.count("relevance ") == 3 * QUERIES and "distance " not in out
    assert "not reranked" not in out
    # one embedder and one reranker, each loaded once, and listed by the cache report
    assert "2 engines" in out and " rerank " in out and " embed " in out


@pytest.mark.slow
def test_quickstart_without_a_reranker_says_how_to_get_one(tmp_path):
    out = _run(tmp_path)
    assert "using the packaged all-MiniLM-L6-v2" in out
    assert out.count("distance ") == 3 * QUERIES
    assert "results are not reranked" in out and "lancedb-baai download BAAI/bge-reranker-base" in out
    # --limit spreads over all topics: the first 60 paragraphs alphabetically are all assert/assignment/async
    topics = {line[3:].split("]")[0] for line in out.splitlines() if line.startswith("  [")}
    assert topics - {"assert", "assignment", "async"}
