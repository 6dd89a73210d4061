"""The documentation site: it builds with ``mkdocs build --strict``, every page is in the nav,
the README's links lead somewhere, and every CLI option and environment variable is documented.

The Python blocks of the pages run in tests/test_readme.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from lancedb_baai import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
PACKAGE = ROOT / "lancedb_baai"


def pages() -> dict[str, str]:
    """Every page under docs/, by its path relative to docs/ (as the nav names it)."""
    return {p.relative_to(DOCS).as_posix(): p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))}


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_the_site_builds_strict(tmp_path):
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' (the dev extra brings it)", pytrace=False)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
                           "--site-dir", str(tmp_path / "site")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav():
    nav = _nav_files(yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))["nav"])
    assert sorted(nav) == sorted(pages()), (
        f"pages not in mkdocs.yml's nav: {sorted(set(pages()) - set(nav))}; "
        f"nav entries without a page: {sorted(set(nav) - set(pages()))}")


def test_the_readme_links_lead_somewhere():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {t.partition("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    missing = sorted(t for t in targets if t and not (ROOT / t).exists())
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_cli_option_is_documented():
    text = "\n".join(pages().values())
    command = typer.main.get_command(cli.app)
    undocumented = [
        f"{name} {option}"
        for name, sub in [("lancedb-baai", command), *command.commands.items()]
        for param in sub.params
        for option in [*param.opts, *param.secondary_opts]
        if option.startswith("--") and option != "--help" and not re.search(rf"{re.escape(option)}\b", text)]
    undocumented += [f"lancedb-baai {name}" for name in command.commands if f"`{name}`" not in pages()["cli.md"]]
    assert not undocumented, f"not in docs/ (the command line page or the page it links to): {undocumented}"


def test_every_environment_variable_is_documented():
    used = {m for p in PACKAGE.rglob("*.py")
            for m in re.findall(r"(?<![A-Za-z0-9_])LANCEDB_BAAI_[A-Z0-9_]*[A-Z0-9]", p.read_text(encoding="utf-8"))}
    table = pages()["usage.md"].partition("## Environment variables")[2]
    missing = sorted(v for v in used if f"`{v}`" not in table)
    assert used and not missing, f"environment variables missing from the table in docs/usage.md: {missing}"
