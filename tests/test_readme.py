"""Every Python block in README.md and docs/**/*.md runs as written, on local tiny models and without pandas.

Hub ids are replaced with local models of the same kind; each block runs in a fresh
interpreter in its own folder, where pandas cannot be found (nor ``datasets``, which only the
dev extra's FlagEmbedding brings and which needs pandas), so the documented examples work
on a plain install (the package and CPU torch, no dev extra). A block preceded by
``<!-- readme-test: skip (reason) -->`` is not run; the reason names what runs those calls
instead. A block written out twice (the quick start is on README.md and docs/index.md) runs once.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lancedb_baai import testing

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SKIP = re.compile(r"^<!-- readme-test: skip[^>]*-->", re.M)
BLOCK = re.compile(r"^(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```", re.S | re.M)
README_MAX_LINES = 250

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


def documents() -> list[Path]:
    """README.md, then every page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def _where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{text[:offset].count(chr(10)) + 1}"


def all_blocks(path: Path) -> list[tuple[str, str, bool]]:
    """Each ```python block of ``path``: (file:line, code, skipped)."""
    text = path.read_text(encoding="utf-8")
    return [(_where(path, text, m.start()), m.group(2), bool(m.group(1))) for m in BLOCK.finditer(text)]


def blocks() -> list[tuple[str, str]]:
    """The blocks that run: (file:line of its first appearance, code), each distinct code once."""
    first: dict[str, str] = {}
    for path in documents():
        for where, code, skipped in all_blocks(path):
            if not skipped:
                first.setdefault(code, where)
    return [(where, code) for code, where in first.items()]


@pytest.fixture(scope="module")
def local_models(models_root, st_model, sharp_st_model, cross_encoder):
    return {
        "BAAI/bge-small-en-v1.5": str(st_model),
        "/models/bge-small-finetuned": str(sharp_st_model),
        "BAAI/bge-reranker-base": str(cross_encoder),
        "BAAI/bge-m3": str(testing.build_m3_model(models_root / "readme" / "bge-m3")),
    }


def test_the_docs_have_runnable_blocks():
    assert len(blocks()) >= 3
    assert any(not skipped for _, _, skipped in all_blocks(README)), "README.md: the quick start must run"


def test_the_readme_is_short_and_keeps_its_set_up():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail to a page under docs/")
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", text, re.M), f"README.md: the set-up block must show `{command}`"


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_skip_marker_says_why_and_precedes_a_block(path):
    text = path.read_text(encoding="utf-8")
    for marker in SKIP.finditer(text):
        where = _where(path, text, marker.start())
        assert re.fullmatch(r"<!-- readme-test: skip \(.+\) -->", marker.group()), (
            f"{where}: write the marker as <!-- readme-test: skip (reason) -->")
        assert text.startswith("\n```python\n", marker.end()), f"{where}: the marker must sit right above a ```python block"


@pytest.mark.slow
@pytest.mark.parametrize("where, code", blocks(), ids=[where for where, _ in blocks()])
def test_doc_block_runs_on_a_plain_install(where, code, local_models, tmp_path):
    for hub_id, path in local_models.items():
        code = code.replace(f'"{hub_id}"', repr(path))
    assert not re.search(r"[\"']BAAI/", code), f"{where}: a hub id without a local stand-in"
    done = subprocess.run([sys.executable, "-c", NO_PANDAS + code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"block at {where} failed:\n{done.stderr[-3000:]}"
