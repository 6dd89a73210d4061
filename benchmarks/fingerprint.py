"""Run with: .venv/bin/python benchmarks/fingerprint.py [--quick] [--out PATH] [--size-mib N]

What fingerprinting a model costs: the weights digest that table metadata records and that
the drift guard compares, for the packaged all-MiniLM-L6-v2 and for a directory holding one
synthetic weight file of 1 GiB (``--quick``: 64 MiB).

Each digest reads the config and tokenizer files whole and, per weight file, its header,
first and last MiB and 16 samples of 64 KiB spread over it: a few MiB whatever the size.
Figures are the best and median of 5 rounds with the files in the page cache (the state
after the model has been loaded once), and the first round after writing the file, which
on this machine is also mostly cached; a cold disk adds one seek per sample. Compared with
a full sha256 of the same file, to show what sampling saves.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common

from lancedb_baai.models import fingerprint as _fingerprint

MIB = 1 << 20


def _add_options(parser) -> None:
    parser.add_argument("--size-mib", type=int, default=None, help="synthetic weight file size (default 1024; quick 64)")


def _synthetic(directory: Path, size_mib: int) -> Path:
    """A model directory with a config and one weight file of random bytes (written in 8 MiB blocks)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"hidden_size": 1024}', encoding="utf-8")
    block = os.urandom(8 * MIB)
    with (directory / "model.safetensors").open("wb") as stream:
        for _ in range(max(1, size_mib // 8)):
            stream.write(block)
    return directory


def _rounds(path: Path, rounds: int) -> tuple[float, list[float]]:
    first = time.perf_counter()
    _fingerprint.weights_digest(path)
    first = time.perf_counter() - first
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        _fingerprint.weights_digest(path)
        times.append(time.perf_counter() - start)
    return first, times


def _full_sha256(path: Path) -> float:
    start = time.perf_counter()
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(8 * MIB), b""):
                digest.update(block)
    return time.perf_counter() - start


def main() -> None:
    args = _common.parse_args("fingerprint", __doc__, _add_options)
    size = args.size_mib or (64 if args.quick else 1024)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [("all-MiniLM-L6-v2 (packaged)", Path(_common.minilm_path())),
                  (f"synthetic {size} MiB weight file", _synthetic(Path(tmp) / "synthetic", size))]
        for label, path in models:
            megabytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MIB
            first, times = _rounds(path, 5)
            rows.append({"model": label, "size_mib": megabytes, "first_ms": first * 1e3,
                         "best_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3,
                         "full_sha256_ms": _full_sha256(path) * 1e3})
    for row in rows:
        row["x_faster_than_full"] = row["full_sha256_ms"] / row["median_ms"]
    _common.print_table("weights fingerprint cost", rows, [
        ("model", "model", ""), ("size_mib", "MiB", ".1f"), ("first_ms", "first ms", ".1f"),
        ("best_ms", "best ms", ".1f"), ("median_ms", "median ms", ".1f"),
        ("full_sha256_ms", "full sha256 ms", ".0f"), ("x_faster_than_full", "x vs full", ".0f")])
    _common.write_json(args.out, {"quick": args.quick, "size_mib": size, "machine": _common.machine_info(),
                                  "results": rows})


if __name__ == "__main__":
    main()
