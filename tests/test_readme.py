"""Every Python block in README.md runs as written, on local tiny models and without pandas.

Hub ids are replaced with local models of the same kind; each block runs in a fresh
interpreter in its own folder, where pandas cannot be found (nor ``datasets``, which only the
dev extra's FlagEmbedding brings and which needs pandas), so the README's examples work
on a plain install (the package and CPU torch, no dev extra). A block preceded by
``<!-- readme-test: skip (reason) -->`` is not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lancedb_baai import testing

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```", re.S)

NO_PANDAS = """\
import importlib.machinery, sys
_HIDDEN = ("pandas", "datasets")
class _PlainInstall(importlib.machinery.PathFinder):  # what only the dev extra brings is not there
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in _HIDDEN else super().find_spec(name, path, target)
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in super().find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower() not in _HIDDEN)
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _PlainInstall
"""


def blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in BLOCK.finditer(text) if not m.group(1)]


@pytest.fixture(scope="module")
def local_models(models_root, st_model, sharp_st_model, cross_encoder):
    return {
        "BAAI/bge-small-en-v1.5": str(st_model),
        "/models/bge-small-finetuned": str(sharp_st_model),
        "BAAI/bge-reranker-base": str(cross_encoder),
        "BAAI/bge-m3": str(testing.build_m3_model(models_root / "readme" / "bge-m3")),
    }


def test_the_readme_has_runnable_blocks():
    assert len(blocks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("line, code", blocks(), ids=[f"line{line}" for line, _ in blocks()])
def test_readme_block_runs_on_a_plain_install(line, code, local_models, tmp_path):
    for hub_id, path in local_models.items():
        code = code.replace(f'"{hub_id}"', repr(path))
    assert not re.search(r"[\"']BAAI/", code), f"README line {line}: a hub id without a local stand-in"
    done = subprocess.run([sys.executable, "-c", NO_PANDAS + code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README block at line {line} failed:\n{done.stderr[-3000:]}"
