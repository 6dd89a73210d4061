"""Run with: .venv/bin/python benchmarks/run_all.py [--only NAME]... [--full] [--timeout SECONDS]

Every benchmark script of this folder (embed, rerank, loads, memory, gpu, ray_ingest: whichever are
present), each in its own process at its ``--quick`` size (``--full``: the full size), its
output echoed as it comes; then a table of pass / FAIL / skipped per script and the seconds
each took. Exits 1 if any failed. A script that cannot run here (gpu.py without CUDA) exits
0 after a line ending in "skipped", and is reported as skipped rather than as a pass.
``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCHMARKS = ("embed", "rerank", "loads", "memory", "gpu", "ray_ingest")
FOLDER = Path(__file__).resolve().parent


def run_script(script: Path, args: list[str], timeout: float) -> tuple[str, float]:
    """Run one benchmark, echoing its output as it comes; return (result, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=script.parents[1], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        skipped = _echo(proc)
        code = proc.wait()
    finally:
        timer.cancel()
    seconds = time.perf_counter() - start
    if timed_out.is_set():
        return f"FAIL (timed out after {timeout:g}s)", seconds
    if code != 0:
        return f"FAIL (exit {code})", seconds
    return ("skipped" if skipped else "pass"), seconds


def _echo(proc: subprocess.Popen) -> bool:
    """Print the script's lines as they come; whether one said the script skipped itself."""
    skipped = False
    for line in proc.stdout:  # type: ignore[union-attr]
        print(line, end="", flush=True)
        skipped = skipped or line.rstrip().endswith("skipped")
    return skipped


def chosen(folder: Path, only: list[str] | None) -> list[str]:
    """The benchmarks to run: ``only`` (names, ".py" optional), else every one present in ``folder``."""
    if not folder.is_dir():
        raise SystemExit(f"error: no benchmarks folder at {folder}")
    present = [name for name in BENCHMARKS if (folder / f"{name}.py").is_file()]
    wanted = [name.removesuffix(".py") for name in only] if only else present
    missing = [name for name in wanted if not (folder / f"{name}.py").is_file()]
    if missing or not wanted:
        raise SystemExit(f"error: no benchmark script {', '.join(missing) or 'at all'} in {folder}; "
                         f"present: {present or 'none'}")
    return wanted


def _print_results(rows: list[dict]) -> None:
    import _common  # the package's table layout; imported once the scripts have run

    print()
    _common.print_table("results:", rows, [("script", "script", ""), ("result", "result", ""),
                                           ("seconds", "seconds", "")])


def main(argv: list[str] | None = None, folder: Path = FOLDER) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run just this benchmark (repeatable), e.g. embed")
    parser.add_argument("--full", action="store_true", help="full-size runs instead of --quick (slow)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per script (default 1800)")
    args = parser.parse_args(argv)
    rows = []
    for name in chosen(folder, args.only):
        extra = [] if args.full else ["--quick"]
        print(f"== benchmarks/{name}.py {' '.join(extra)}".rstrip(), flush=True)
        result, seconds = run_script(folder / f"{name}.py", extra, args.timeout)
        rows.append({"script": f"{name}.py", "result": result, "seconds": round(seconds, 1)})
    _print_results(rows)
    return 1 if any(row["result"].startswith("FAIL") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
