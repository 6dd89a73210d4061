"""The export cache: a model prepared for a runtime once per machine, in a cache directory, never in the model's.

An export is a directory under :func:`cache_root`, named by the model's weights digest,
the engine kind, the runtime, the graph precision and the exporter's versions, holding
what the runtime wrote (its graph, the tokenizer as ``tokenizer.json``) and
``manifest.json`` (written last, with the size and digest of every file). It is built in a temporary directory beside its final
place and renamed into it, under the model's inter-process lock, so a process that dies
mid-export leaves no half-export behind, and a second process waits and then reads.
An export whose files do not match its manifest is treated as missing and built again.

What goes into an export is the runtime's business (:mod:`lancedb_baai.runtimes`); this
module only knows where exports live and when one is whole.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import fingerprint as _fingerprint

logger = logging.getLogger(__name__)

FORMAT = 2
"""Bumped when what an export holds changes; part of every export's directory name (2: the manifest holds the graph's outputs and facts)."""
CACHE_ENV = "LANCEDB_BAAI_CACHE"
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where exports live: ``$LANCEDB_BAAI_CACHE``, else ``$XDG_CACHE_HOME/lancedb_baai``, else ``~/.cache/lancedb_baai``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lancedb_baai"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def export_dir(model: str, weights: str | None, name: str) -> Path:
    """The directory of the export ``name`` (kind, runtime, precision, versions) of ``model`` with these weights."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.strip("/"))[-60:]
    return cache_root() / "exports" / f"{slug}-{weights}" / name


def manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, unaltered export in ``directory``, else None."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        return None
    for name, expected in files.items():
        file = directory / name
        if not file.is_file() or file.stat().st_size != expected.get("size"):
            return None
        if _fingerprint.file_digest(file, sampled=True) != expected.get("digest"):
            return None
    return data


def ensure(target: Path, lock: Any, write: Callable[[Path], dict[str, Any]], announce: Callable[[], None],
           what: str) -> Path:
    """The export in ``target``: the one on disk if it is whole, else written now (once across processes).

    ``write(directory)`` writes the export's files into an empty staging directory and
    returns what the manifest records besides them; ``announce`` is called just before, so
    the user learns that a one-time export runs. ``lock`` is the model's inter-process lock.
    """
    if manifest(target) is not None:
        return target
    with lock:
        if manifest(target) is not None:
            return target  # another process made it while this one waited
        if target.exists():
            logger.warning("export %s does not match its manifest (partial or altered): building it again", target)
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        announce()
        start = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        try:
            _write_manifest(staging, {"format": FORMAT, **write(staging)})
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("exported %s in %.1fs", what, time.perf_counter() - start)
    return target


def _write_manifest(directory: Path, facts: dict[str, Any]) -> None:
    """``manifest.json``, written last: the facts and the size and sampled digest of every file."""
    files = {f.name: {"size": f.stat().st_size, "digest": _fingerprint.file_digest(f, sampled=True)}
             for f in sorted(directory.iterdir()) if f.is_file()}
    (directory / MANIFEST).write_text(json.dumps({**facts, "files": files}, indent=2), encoding="utf-8")


def versions(*names: str) -> str:
    """The installed versions of ``names`` (read without importing them), as part of an export's name."""
    return "-".join(f"{name}{_version(name)}" for name in names)
