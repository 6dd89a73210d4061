"""pyproject.toml as setuptools reads it: the metadata builds without deprecation warnings."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_builds_without_warnings(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # setuptools resolves the readme and the version attribute from here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), os.fspath(ROOT / "pyproject.toml"))
    problems = [f"{w.category.__name__}: {w.message}" for w in caught
                if issubclass(w.category, (DeprecationWarning, setuptools.SetuptoolsDeprecationWarning))]
    assert not problems, problems
    assert dist.metadata.license_expression == "Apache-2.0"


def test_build_system_takes_a_setuptools_that_reads_an_spdx_license():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML without tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"  # PEP 639: an SPDX expression, not a table
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first to read it so
