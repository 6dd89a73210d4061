"""A directory of finished parts of a long job, so a run killed at any point resumes with them.

Each part is one file, written under a temporary name and renamed into place: a kill
leaves either no file or a whole one. :func:`lancedb_baai.reembed` keeps its embedded
chunks and written fragments here, :func:`lancedb_baai.fill_missing` its batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

_DEFAULT_ROOT = "lancedb_baai-reembed"


class Checkpoint:
    """Finished parts under ``directory``: Arrow tables and JSON documents, each written once."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def default(cls, *key: Any) -> Checkpoint:
        """One directory per ``key`` (table, column, model) in the temp directory: the same call finds it again."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return cls(Path(tempfile.gettempdir()) / _DEFAULT_ROOT / digest)

    def table(self, name: str, make: Callable[[], pa.Table]) -> pa.Table:
        """The part ``name``, read back if a previous run finished it, else made by ``make()`` and kept."""
        import pyarrow.feather as feather

        path = self.directory / f"{name}.arrow"
        if path.exists():
            return feather.read_table(path)
        made = make()
        self._write(path, lambda scratch: feather.write_feather(made, scratch))
        return made

    def has(self, name: str) -> bool:
        return (self.directory / f"{name}.arrow").exists() or (self.directory / f"{name}.json").exists()

    def document(self, name: str, make: Callable[[], Any]) -> Any:
        """Like :meth:`table`, for a JSON-serialisable value."""
        path = self.directory / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        made = make()
        self._write(path, lambda scratch: scratch.write_text(json.dumps(made), encoding="utf-8"))
        return made

    @staticmethod
    def _write(path: Path, write: Callable[[Path], None]) -> None:
        scratch = path.with_name(path.name + ".tmp")
        write(scratch)
        scratch.replace(path)

    def remove(self) -> None:
        """Forget every part (after the job's commit)."""
        shutil.rmtree(self.directory, ignore_errors=True)
