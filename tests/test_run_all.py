"""benchmarks/run_all.py: runs each present benchmark script --quick in its own process, then a table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def _load():
    spec = importlib.util.spec_from_file_location("run_all", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _load()


@pytest.fixture(autouse=True)
def _script_folder_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when it runs: its folder (and _common) on the path


@pytest.fixture
def bench_dir(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "embed.py").write_text(textwrap.dedent("""
        import sys
        print("embed table", sys.argv[1:])
        sys.exit(0 if sys.argv[1:] == ["--quick"] else 3)
    """))
    (folder / "rerank.py").write_text("import sys\nprint('rerank broke', file=sys.stderr)\nsys.exit(1)\n")
    (folder / "_common.py").write_text("raise SystemExit('not a benchmark')\n")
    return folder


def test_the_docstring_says_how_to_run_it():
    assert run_all.__doc__.startswith("Run with: .venv/bin/python benchmarks/run_all.py")


@pytest.mark.timeout(120)
def test_runs_each_present_script_quick_and_reports(bench_dir, capsys):
    assert run_all.main([], folder=bench_dir) == 1  # rerank.py failed
    out = capsys.readouterr().out
    assert "embed table ['--quick']" in out and "rerank broke" in out
    table = out[out.rindex("script"):].splitlines()
    assert table[2].split()[:2] == ["embed.py", "pass"]
    assert table[3].split()[:4] == ["rerank.py", "FAIL", "(exit", "1)"]
    assert len(table) == 4  # loads.py, gpu.py, ray_ingest.py absent; _common.py not a benchmark


@pytest.mark.timeout(120)
def test_only_and_full(bench_dir, capsys):
    assert run_all.main(["--only", "embed"], folder=bench_dir) == 0
    assert run_all.main(["--only", "embed.py"], folder=bench_dir) == 0
    assert run_all.main(["--only", "embed", "--full"], folder=bench_dir) == 1
    assert "FAIL (exit 3)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no benchmark script gpu"):
        run_all.main(["--only", "gpu"], folder=bench_dir)


@pytest.mark.timeout(120)
def test_a_skip_is_reported_as_a_skip(bench_dir, capsys):
    (bench_dir / "gpu.py").write_text("print('no CUDA device: skipped')\n")
    assert run_all.main(["--only", "gpu", "--only", "embed"], folder=bench_dir) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[-2:]]
    assert rows == [["gpu.py", "skipped"], ["embed.py", "pass"]]


@pytest.mark.timeout(120)
def test_a_timeout_is_a_failure(bench_dir, capsys):
    (bench_dir / "embed.py").write_text("import time\ntime.sleep(60)\n")
    assert run_all.main(["--only", "embed", "--timeout", "1"], folder=bench_dir) == 1
    assert "timed out after 1s" in capsys.readouterr().out


def test_no_benchmarks_folder(tmp_path):
    with pytest.raises(SystemExit, match="no benchmarks folder"):
        run_all.main([], folder=tmp_path / "nowhere")


@pytest.mark.timeout(120)
def test_runs_as_a_script_from_any_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=100,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "--only" in proc.stdout and "--quick" in proc.stdout, proc.stderr
