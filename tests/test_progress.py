"""Progress bars: shown when asked for or when the automatic conditions hold, never for tiny calls or in CI."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import threading

import pytest
import tqdm.auto

from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction
from lancedb_baai.engines import progress as _progress

MANY = _progress.AUTO_MIN_TEXTS
SOME = max(_progress.TINY_CALL, 40)


class _Bars:
    """Stands in for tqdm.auto.tqdm and records each bar made."""

    def __init__(self) -> None:
        self.made: list[dict] = []

    def __call__(self, total=None, desc=None, **kwargs):
        record = {"total": total, "desc": desc, "counted": 0, "closed": False}
        self.made.append(record)

        class Bar:
            def update(self, n=1):
                record["counted"] += n

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                record["closed"] = True
                return False

        return Bar()


def record_bars(monkeypatch, fn) -> _Bars:
    """Load ``fn``'s engine, then record the bars made from now on.

    Loading comes first because some libraries subclass tqdm.auto.tqdm when they are imported.
    """
    fn.engine()
    fake = _Bars()
    monkeypatch.setattr(tqdm.auto, "tqdm", fake)
    return fake


def _stderr_is_a_terminal(monkeypatch, answer: bool) -> None:
    # Patch the stream object itself: pytest puts its own capture stream back as sys.stderr
    # between fixture setup and the test, so replacing sys.stderr in a fixture would not last.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: answer, raising=False)


@pytest.fixture
def watched(monkeypatch):
    """Someone at a terminal, outside CI, not in a notebook."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    _stderr_is_a_terminal(monkeypatch, True)


@pytest.fixture
def unattended(monkeypatch):
    """Output redirected to a file: no terminal, no notebook."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    _stderr_is_a_terminal(monkeypatch, False)


def texts(n: int) -> list[str]:
    return [f"text {chr(97 + i % 26)}" for i in range(n)]


# --- the rule -------------------------------------------------------------------------------

def test_explicit_choice_is_obeyed_above_a_tiny_call(unattended):
    assert _progress.wanted(True, SOME) is True
    assert _progress.wanted(True, _progress.TINY_CALL - 1) is False
    assert _progress.wanted(True, 0) is False
    assert _progress.wanted(False, 10 * MANY) is False


def test_automatic_bar_needs_many_texts_and_a_watcher(watched):
    assert _progress.wanted(None, MANY) is True
    assert _progress.wanted(None, MANY - 1) is False


def test_no_automatic_bar_when_unattended(unattended):
    assert _progress.wanted(None, 10 * MANY) is False


def test_notebook_counts_as_watched(unattended, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # any module object will do
    assert _progress.wanted(None, MANY) is True


def test_ci_silences_the_automatic_bar_even_at_a_terminal(watched, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    monkeypatch.setenv("CI", "1")
    assert _progress.wanted(None, 10 * MANY) is False
    assert _progress.wanted(True, SOME) is True  # an explicit request still wins


# --- through the engines -----------------------------------------------------------------------

def test_embedding_bar_counts_every_text(st_model, unattended, monkeypatch):
    fn = BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32", batch_size=8, show_progress=True)
    bars = record_bars(monkeypatch, fn)
    fn.generate_embeddings(texts(SOME))
    assert len(bars.made) == 1
    assert bars.made[0] == {"total": SOME, "desc": "embedding", "counted": SOME, "closed": True}


def test_rerank_bar_counts_every_passage(cross_encoder, unattended, monkeypatch):
    fn = BAAIRerankFunction(name=str(cross_encoder), device="cpu", dtype="float32", show_progress=True)
    bars = record_bars(monkeypatch, fn)
    fn.score("a query", texts(SOME))
    assert [(b["desc"], b["total"], b["counted"]) for b in bars.made] == [("reranking", SOME, SOME)]


def test_no_bar_for_a_query_even_when_asked(st_model, watched, monkeypatch):
    fn = BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32", show_progress=True)
    bars = record_bars(monkeypatch, fn)
    fn.compute_query_embeddings("how do I sort a list")
    fn.generate_embeddings(texts(3))
    assert bars.made == []


def test_automatic_bar_for_a_large_call_at_a_terminal(st_model, watched, monkeypatch):
    fn = BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32", batch_size=256)
    bars = record_bars(monkeypatch, fn)
    fn.generate_embeddings(texts(MANY))
    assert [(b["total"], b["counted"]) for b in bars.made] == [(MANY, MANY)]


@pytest.mark.parametrize("setting", ["ci", "redirected", "off"])
def test_no_automatic_bar_for_a_large_call_otherwise(st_model, watched, monkeypatch, setting):
    show = None
    if setting == "ci":
        monkeypatch.setenv("CI", "true")
    elif setting == "redirected":
        _stderr_is_a_terminal(monkeypatch, False)
    else:
        show = False
    fn = BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32", batch_size=256, show_progress=show)
    bars = record_bars(monkeypatch, fn)
    fn.generate_embeddings(texts(MANY))
    assert bars.made == []


def test_real_bar_is_written_to_stderr(st_model, capsys, unattended):
    fn = BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32", batch_size=8, show_progress=True)
    vectors = fn.generate_embeddings(texts(SOME))
    err = capsys.readouterr().err
    assert len(vectors) == SOME
    assert "embedding" in err and f"/{SOME}" in err


# --- the command line ------------------------------------------------------------------------

def test_cli_progress_option(st_model, monkeypatch):
    from typer.testing import CliRunner

    from lancedb_baai.cli import app

    monkeypatch.delenv("CI", raising=False)
    lines = "\n".join(texts(SOME)) + "\n"
    args = ["embed", "-m", str(st_model), "--dtype", "float32"]
    asked = CliRunner().invoke(app, [*args, "--progress"], input=lines)
    default = CliRunner().invoke(app, args, input=lines)
    assert asked.exit_code == 0 and default.exit_code == 0
    assert len(asked.stdout.splitlines()) == len(default.stdout.splitlines()) == SOME
    assert "embedding" in asked.stderr and "text" in asked.stderr
    assert "embedding" not in default.stderr  # not a terminal, not asked


def _run_on_a_terminal(args: list[str], stdin: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run a command whose stderr is a pseudo-terminal (80 columns); return (code, stdout, terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(args, input=stdin, stdout=subprocess.PIPE, stderr=slave, text=True, env=env,
                              timeout=240)
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.returncode, proc.stdout, b"".join(seen).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminal test written for Linux")
def test_cli_bar_appears_by_itself_on_a_terminal(st_model):
    """The real thing: a terminal on stderr, nothing asked. (CI=1 is covered in-process above.)"""
    stdin = "\n".join(texts(MANY + 10)) + "\n"
    args = [sys.executable, "-m", "lancedb_baai", "embed", "-m", str(st_model), "--dtype", "float32",
            "--batch-size", "256"]
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"HF_HUB_OFFLINE": "1"}
    code, out, terminal = _run_on_a_terminal(args, stdin, env)
    assert code == 0, terminal
    assert len(out.splitlines()) == MANY + 10
    assert "embedding:" in terminal and "text/s" in terminal
