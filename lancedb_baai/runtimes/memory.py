"""Where a model's weights live in this process: mapped from files (one copy per host) or private.

A weight read through a memory map of a file is a page of the host's page cache: every
process that maps the same file reads the same physical pages, so N workers cost one
copy. A weight copied, cast or repacked into the process's own memory costs one copy per
worker. Runtimes report which of the two they do through :class:`WeightMemory`, measured
from ``/proc/self/maps`` and ``/proc/self/smaps`` (Linux; elsewhere nothing is mapped
as far as this module can tell).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WeightMemory:
    """The weights of one engine in this process: bytes mapped from files and bytes held privately."""

    mapped: int
    """Bytes of weights read through a map of a file (shared with every process mapping it)."""
    private: int
    """Bytes this process holds of its own for the weights (copies, casts, repacked layouts)."""
    shared: bool
    """Whether N processes running this engine hold about one copy of the weights between them."""
    reason: str
    """Why (and where the mapped weights come from), in words."""

    def record(self) -> dict[str, Any]:
        """The fields ``cache_info()`` records carry."""
        return {"weights_mapped_bytes": self.mapped, "weights_private_bytes": self.private,
                "shared_weights": self.shared, "shared_weights_reason": self.reason}


UNKNOWN = WeightMemory(0, 0, False, "this runtime does not say where its weights live")


def _maps() -> Iterator[tuple[int, int, str]]:
    """This process's file-backed mappings: (start, end, path)."""
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                yield start, end, parts[5].rstrip("\n")


def split_tensors(tensors: Iterable[Any]) -> tuple[int, int, set[str]]:
    """Bytes of torch tensors that are views of a mapped file, bytes that are not, and those files.

    Each storage is counted once (tied weights share one).
    """
    ranges = sorted(_maps())
    starts = [start for start, _, _ in ranges]
    mapped = private = 0
    files: set[str] = set()
    seen: set[int] = set()
    for tensor in tensors:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in seen or tensor.device.type != "cpu":
            continue
        seen.add(pointer)
        index = bisect.bisect_right(starts, pointer) - 1
        path = ranges[index][2] if index >= 0 and pointer < ranges[index][1] else None
        if path is None:
            private += storage.nbytes()
        else:
            mapped += storage.nbytes()
            files.add(path)
    return mapped, private, files


def mapped_in(roots: Iterable[Path], pid: int | str = "self", field: str = "Rss") -> int:
    """Bytes (``field``: Rss, Pss...) of process ``pid``'s mappings of files under ``roots`` (a replaced file's too)."""
    prefixes = tuple(str(Path(root).resolve()) + os.sep for root in roots)
    total, counting = 0, False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's header line
                parts = line.split(maxsplit=5)
                counting = len(parts) == 6 and parts[5].startswith(prefixes)
            elif counting and head == f"{field}:":
                total += int(line.split()[1]) * 1024
    return total


def process_bytes(field: str, pid: int | str = "self") -> int:
    """One total of process ``pid``'s memory (``field``: Pss, Anonymous...); 0 where it cannot be read."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def anonymous_bytes() -> int:
    """This process's anonymous (private, not file-backed) resident memory; 0 where it cannot be read."""
    return process_bytes("Anonymous")


def growth(action: Callable[[], Any]) -> tuple[Any, int]:
    """What ``action()`` returns, and how much anonymous memory this process gained meanwhile."""
    before = anonymous_bytes()
    result = action()
    return result, max(0, anonymous_bytes() - before)
