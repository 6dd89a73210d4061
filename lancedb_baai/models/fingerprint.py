"""What identifies the model that made a vector column, cheaply, and how two of them differ.

A fingerprint has two parts:

- the **weights**: a digest of a model directory's contents (names and sizes of every file
  the torch path reads, full hashes of the config and tokenizer files, and for each weight
  file its header, first and last MiB and 16 samples spread over it), plus the hub commit
  when the directory is a hub snapshot. Reading a few MiB per file keeps it well under a
  second for a 1 GB file (``benchmarks/fingerprint.py``), and the sampled ranges catch a
  fine-tune that left the embedding matrix at the start of the file untouched;
- the **semantics** a function adds: pooling, normalization, query instruction, output
  (dense or ColBERT), vector width, dtype, package version.

:func:`differences` says which compared fields differ. The dtype, the package version, the
model's name and path and the hub revision are recorded but not compared: the same weights
in bf16 or under another name make vectors the stored ones can be searched with, and a new
hub commit that leaves the files as they were (a README edit) is no drift.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from . import hub as _hub

COMPARED = ("weights", "pooling", "output", "dims", "normalize", "query_instruction")
"""Fingerprint fields that must match for stored vectors and new queries to be comparable."""

_MIB = 1 << 20
_SAMPLES = 16
_SAMPLE = 64 << 10
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_SKIPPED_DIRS = frozenset({"onnx", "openvino", "__pycache__"})  # other runtimes' files: torch never reads them
_SKIPPED_SUFFIXES = (".md", ".lock", ".pyc")


def _model_files(path: Path) -> list[Path]:
    """The files under ``path`` that can change what the torch engine computes, in a stable order."""
    files = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        files.extend(Path(root) / n for n in names if not n.startswith(".") and not n.endswith(_SKIPPED_SUFFIXES))
    return sorted(files, key=lambda f: f.relative_to(path).as_posix())


def _weight_ranges(size: int, header: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a weight file that are read: header, ends, samples."""
    ranges = [(0, max(header, min(size, _MIB))), (max(0, size - _MIB), min(size, _MIB))]
    if size > 2 * _MIB:
        step = (size - _SAMPLE) // (_SAMPLES + 1)
        ranges += [(step * (i + 1), _SAMPLE) for i in range(_SAMPLES)]
    return ranges


def _safetensors_header(file: Path, size: int) -> int:
    """Bytes of a safetensors file's length prefix and JSON header (0 for other formats)."""
    if file.suffix != ".safetensors" or size < 8:
        return 0
    with file.open("rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
    return 8 + length if length <= size - 8 else 0


def file_digest(file: Path, sampled: bool | None = None) -> str:
    """sha256 of a small file whole, or of a weight file's header, ends and spread samples.

    ``sampled`` says which; None decides by the file's suffix (weight files are sampled).
    """
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    if sampled is None:
        sampled = file.name.endswith(_WEIGHT_SUFFIXES)
    with file.open("rb") as stream:
        if not sampled:
            for block in iter(lambda: stream.read(_MIB), b""):
                digest.update(block)
            return digest.hexdigest()
        for offset, length in _weight_ranges(size, _safetensors_header(file, size)):
            stream.seek(offset)
            digest.update(stream.read(length))
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    """One digest of a model directory's contents; equal for copies, different after a re-export."""
    digest = hashlib.sha256()
    for file in _model_files(path):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()[:16]


def hub_revision(path: Path) -> str | None:
    """The commit of a hub snapshot directory (``.../snapshots/<commit>``), None for other directories."""
    return path.name if path.parent.name == "snapshots" else None


def pooling(path: Path) -> str:
    """How the model turns token states into one vector: the sentence-transformers modes, else "cls"."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "cls"  # plain exports and bge-m3: bge's CLS pooling
    parts = []
    for module in _hub.read_json(modules_file, list):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        config_file = path / module.get("path", "") / "config.json"
        if kind == "Pooling" and config_file.is_file():
            config = _hub.read_json(config_file)
            modes = [m.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                     for m in sorted(config) if m.startswith("pooling_mode_") and config[m]]
            parts.append("+".join(modes) or "cls")
        elif kind in ("Dense", "Normalize"):
            parts.append(kind.lower())
    return ",".join(parts) or "cls"


@functools.lru_cache(maxsize=64)
def _weights_of(path: str, stamp: tuple) -> dict[str, Any]:
    directory = Path(path)
    return {"weights": weights_digest(directory), "revision": hub_revision(directory),
            "pooling": pooling(directory), "path": path}


def weights(path: Path) -> dict[str, Any]:
    """The weights part of a fingerprint for the model files in ``path``.

    Memoised per process on the files' names, sizes and modification times, so a table
    reopened many times reads the files once; a re-export changes a time and is read again.
    """
    files = _model_files(path)
    stamp = tuple((f.name, s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()])
    return dict(_weights_of(os.path.realpath(path), stamp))


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files under ``path`` (what a runtime reads to load the model)."""
    return sum(f.stat().st_size for f in _model_files(path) if f.name.endswith(_WEIGHT_SUFFIXES))


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The compared fields in which two fingerprints differ (fields one of them lacks are skipped)."""
    return [field for field in COMPARED
            if field in stored and field in current and stored[field] != current[field]]


def short(fingerprint: dict[str, Any]) -> str:
    """One line naming a fingerprint: model, revision or weights digest, and what it computes."""
    origin = f"revision {fingerprint['revision'][:12]}" if fingerprint.get("revision") else "local files"
    return (f"{fingerprint.get('model', '?')} ({origin}, weights {fingerprint.get('weights')}, "
            f"{fingerprint.get('output', 'dense')} {fingerprint.get('dims')}-d, pooling {fingerprint.get('pooling')}, "
            f"normalize={fingerprint.get('normalize')}, {fingerprint.get('dtype')})")
