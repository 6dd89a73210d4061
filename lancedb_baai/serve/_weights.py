"""What a model weighs before it is loaded, what a loaded engine holds, and what the process holds.

The memory budget is checked before a load, so the size of a model that is not loaded yet
comes from its files: the safetensors headers list every tensor's shape and stored dtype
(a few kilobytes read, no weights), scaled to the dtype the engine will run in. Weights in
``pytorch_model.bin`` form are counted by file size, scaled the same way from the dtype
``config.json`` declares. A loaded engine is counted from its parameters and buffers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_HEADER_LIMIT = 100 * 2**20


def weight_files(path: Path) -> list[Path]:
    """The files holding ``path``'s weights: safetensors if any, else PyTorch ``.bin`` files."""
    found = sorted(path.glob("*.safetensors"))
    return found or sorted(path.glob("pytorch_model*.bin"))


def bytes_on_disk(path: Path, dtype: str) -> int:
    """Bytes ``path``'s weights take in memory as ``dtype`` (float tensors scaled, others as stored)."""
    target = _BYTES[dtype]
    total = 0
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            total += _safetensors_bytes(file, target)
        else:
            stored = _BYTES.get(str(_read_config(path).get("torch_dtype") or "float32"), 4)
            total += file.stat().st_size * target // stored
    return total


def _safetensors_bytes(file: Path, target: int) -> int:
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"{file} has a {length}-byte header: not a safetensors file")
        header = json.loads(f.read(length))
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= dim
        total += count * (target if tensor["dtype"] in _FLOATS else _BYTES.get(tensor["dtype"], 4))
    return total


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def engine_bytes(engine: Any) -> int:
    """Bytes of the weights a loaded engine runs on (torch: its parameters and buffers; an export: its graph)."""
    return engine.session.weight_bytes()


def rss() -> int:
    """Resident set size of this process in bytes."""
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def fingerprint(path: Path) -> str:
    """A cheap content fingerprint of a model directory: config, tokenizer and weight-file samples.

    Hashes ``config.json``, the tokenizer files, and for each weight file its size, its
    header and the last MiB, which changes whenever the weights do (a few MiB read for any
    model size). Hub snapshots are identified by their commit directory name instead.
    """
    import hashlib

    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "modules.json"):
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    for file in weight_files(path):
        size = file.stat().st_size
        with open(file, "rb") as f:
            digest.update(f"{file.name}\0{size}\0".encode() + f.read(2**20))
            f.seek(max(0, size - 2**20))
            digest.update(f.read())
    return "sha256:" + digest.hexdigest()[:16]
