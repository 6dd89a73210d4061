"""Targets for the lifecycle tests' worker processes (importable by spawn children)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def embed_and_count(name: str) -> tuple[int, int, list[float]]:
    """Embed one text in this process; report (pid, loads here, first vector)."""
    import lancedb_baai

    vector = lancedb_baai.BAAIEmbeddings(name=name, dtype="float32").generate_embeddings(["python"])[0]
    return os.getpid(), lancedb_baai.load_count(), [float(x) for x in vector]


def frozen_after_collecting(name: str) -> tuple[int, int]:
    """In a forked worker: (objects the collector leaves alone, pid) after a full collection and 100 calls."""
    import gc

    import lancedb_baai

    fn = lancedb_baai.BAAIEmbeddings(name=name, dtype="float32")
    for i in range(100):
        fn.generate_embeddings([f"text {i}"])
    gc.collect()
    return gc.get_freeze_count(), os.getpid()


def load_in_process(name: str, start_at: float, queue) -> None:
    """Wait for a common start time, then load and embed; put (loads, error or None) on ``queue``."""
    time.sleep(max(0.0, start_at - time.time()))
    try:
        _, loads, _ = embed_and_count(name)
        queue.put((loads, None))
    except Exception as exc:  # reported to the test, which asserts there were none
        queue.put((-1, repr(exc)))


def fake_hub_download(source: str, log: str, delay: float):
    """A slow stand-in for the hub download: writes a hub-cache snapshot of ``source``."""

    def download(name: str, revision: str | None) -> Path:
        from lancedb_baai.models import hub as _hub

        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(delay)
        repo = _hub.hub_cache_dir() / ("models--" + name.replace("/", "--"))
        commit = "0" * 40
        snapshot = repo / "snapshots" / commit
        shutil.copytree(source, snapshot, dirs_exist_ok=True)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(commit)
        return snapshot

    return download


def resolve_with_fake_download(name: str, source: str, log: str, delay: float, start_at: float) -> str:
    """Resolve a hub id in this process with the fake downloader; return the directory found."""
    from lancedb_baai.models import hub as _hub

    _hub._download = fake_hub_download(source, log, delay)
    time.sleep(max(0.0, start_at - time.time()))
    return str(_hub.resolve(name))


def swap_rss_series(first: str, second: str, swaps: int) -> list[dict]:
    """Swap back and forth ``swaps`` times without rollback; RSS (MiB) and rollback depth after each."""
    import psutil

    import lancedb_baai

    fn = lancedb_baai.BAAIEmbeddings(name=first, dtype="float32")
    fn.generate_embeddings(["warm up"])
    process, series = psutil.Process(), []
    for i in range(swaps):
        record = lancedb_baai.swap(first, second if i % 2 == 0 else first, dtype="float32")
        fn.generate_embeddings(["after a swap"])
        series.append({"rss_mib": process.memory_info().rss / 2**20, "depth": record["rollback_depth"],
                       "served": record["served"]})
    lancedb_baai.rollback(first, dtype="float32")
    series.append({"rolled_back_to": next(r["served"] for r in lancedb_baai.cache_info())})
    return series
