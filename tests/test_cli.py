"""The `lancedb-baai` command line: info, download, embed, rerank; errors without tracebacks."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import lancedb_baai
from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction, cli
from lancedb_baai.models import catalog as _catalog, hub as _hub
from lancedb_baai.runtimes import device as _device

COMMANDS = ("info", "download", "embed", "rerank", "serve", "reembed")
PASSAGES = ["a lambda is an anonymous function", "lists sort in place with sort", "import a module by name"]


@pytest.fixture
def run():
    logger = logging.getLogger("lancedb_baai")
    level, handlers = logger.level, list(logger.handlers)

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli.app, list(args), input=input)

    yield invoke
    logger.setLevel(level)  # --verbose turns the package's logging on; leave it as it was
    logger.handlers[:] = handlers


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _unboxed(text: str) -> str:
    """Usage errors come in a rich box, wrapped: the words alone, single-spaced."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty hub cache, offline: nothing is cached and nothing can be fetched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


# --- help --------------------------------------------------------------------------------------

def test_help_lists_every_command(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "--verbose" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"lancedb-baai {command}" in result.stdout


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"lancedb_baai {lancedb_baai.__version__}"


@pytest.mark.timeout(120)
def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "lancedb_baai", "--help"], capture_output=True, text=True,
                          timeout=110, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and "embed" in proc.stdout and "rerank" in proc.stdout


# --- info --------------------------------------------------------------------------------------

def test_info_json(run):
    result = run("info", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["versions"]) >= {"lancedb_baai", "torch", "transformers", "lancedb"}
    assert report["versions"]["lancedb_baai"] == lancedb_baai.__version__
    import torch

    assert report["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    device = _device.resolve_device("auto")
    assert report["device"] == device and report["dtype"] == _device.resolve_dtype("auto", device)
    assert report["device_reason"] and report["dtype_reason"]
    assert [m["name"] for m in report["models"]] == list(_catalog.CATALOG)
    small = next(m for m in report["models"] if m["name"] == "BAAI/bge-small-en-v1.5")
    assert (small["kind"], small["dims"], small["max_length"]) == ("embed", 384, 512)


def test_info_model_says_where_its_weights_live(run, st_model):
    result = run("info", "--model", str(st_model), "--backend", "torch", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert record["model"] == str(st_model) and record["backend"] == "torch"
    assert record["shared_weights"] is True and record["weights_mapped_bytes"] > 0
    assert record["shared_weights_reason"].startswith("views of the read-only map of ")  # safetensors or cast copy
    text = run("info", "--model", str(st_model), "--backend", "torch").stdout
    assert f"{record['weights_mapped_bytes'] / 2**20:.1f} MiB mapped from files" in text
    assert "shared by every process on this host" in text


def test_info_text_names_device_dtype_and_models(run):
    result = run("info")
    assert result.exit_code == 0, result.output
    device = _device.resolve_device("auto")
    assert f'device "auto" -> {device}:' in result.stdout
    assert f'dtype  "auto" -> {_device.resolve_dtype("auto", device)}:' in result.stdout
    for name, spec in _catalog.CATALOG.items():
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert spec.kind in line.split() and str(spec.max_length) in line.split()


# --- download ----------------------------------------------------------------------------------

def test_download_fetches_under_the_lock_and_prints_the_directory(run, empty_hub, st_model, monkeypatch):
    calls = []

    def fake_download(name, revision):
        calls.append((name, revision))
        return st_model

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # what a user with network has; _download is fake
    monkeypatch.setattr(_hub, "_download", fake_download)
    result = run("download", "BAAI/bge-small-en-v1.5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(st_model)
    assert calls == [("BAAI/bge-small-en-v1.5", None)]
    assert "downloading BAAI/bge-small-en-v1.5" in result.stderr
    assert list((empty_hub / ".locks" / "lancedb_baai").glob("*.lock")), "downloads happen under the file lock"

    result = run("download", "someone/other-model", "--revision", "v2")
    assert result.exit_code == 0, result.output
    assert calls[-1] == ("someone/other-model", "v2")
    assert "not one of the known bge models" in result.stderr


def test_download_of_a_local_directory_downloads_nothing(run, st_model, monkeypatch):
    monkeypatch.setattr(_hub, "_download", lambda *a: pytest.fail("nothing should be downloaded"))
    result = run("download", str(st_model))
    assert result.exit_code == 0 and result.stdout.strip() == str(st_model)
    assert "nothing to download" in result.stderr


def test_download_of_a_missing_directory_says_so(run, tmp_path):
    result = run("download", str(tmp_path / "no-such-model"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: model directory") and "nothing to download" not in result.stderr


def test_download_offline_fails_with_a_clear_message(run, empty_hub):
    result = run("download", "BAAI/bge-small-en-v1.5")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: model 'BAAI/bge-small-en-v1.5' is not available locally")
    assert "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.output


def test_verbose_logs_model_loads(run, st_model):
    result = run("--verbose", "embed", "-m", str(st_model), input="x\n")
    assert result.exit_code == 0, result.output
    assert f"lancedb_baai.engines.factory: loaded embed model {st_model}" in result.stderr
    lancedb_baai.release()
    before = lancedb_baai.load_count()
    quiet = run("embed", "-m", str(st_model), input="x\n")
    assert quiet.exit_code == 0 and lancedb_baai.load_count() == before + 1  # loaded again, silently
    assert "lancedb_baai.engines.factory" not in quiet.stderr


def test_verbose_shows_the_traceback(run, empty_hub):
    result = run("--verbose", "download", "BAAI/bge-small-en-v1.5")
    assert result.exit_code == 1
    assert isinstance(result.exception, _hub.ModelNotAvailableError)  # raised, not turned into a message
    assert "error: model" not in result.stderr


# --- embed -------------------------------------------------------------------------------------

def test_embed_stdin_matches_the_library(run, st_model):
    result = run("embed", "-m", str(st_model), "--dtype", "float32", input="\n".join(PASSAGES[:2]) + "\n\n  \n")
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [r["text"] for r in records] == PASSAGES[:2]  # blank lines skipped, order kept
    expected = BAAIEmbeddings(name=str(st_model), dtype="float32").generate_embeddings(PASSAGES[:2])
    np.testing.assert_allclose([r["vector"] for r in records], np.stack(expected), atol=1e-6)


def test_embed_query_prepends_the_instruction(run, st_model, tmp_path):
    source = tmp_path / "queries.txt"
    source.write_text("how do I sort a list\r\nwhat is a lambda\n", encoding="utf-8")
    result = run("embed", str(source), "-m", str(st_model), "--dtype", "float32", "--query")
    assert result.exit_code == 0, result.output
    vectors = np.array([r["vector"] for r in json_lines(result.stdout)])
    fn = BAAIEmbeddings(name=str(st_model), dtype="float32")
    assert fn.instruction()  # the fixture is named like bge-small-en-v1.5, so there is one
    queries = np.stack(fn.compute_query_embeddings(["how do I sort a list", "what is a lambda"]))
    passages = np.stack(fn.generate_embeddings(["how do I sort a list", "what is a lambda"]))
    np.testing.assert_allclose(vectors, queries, atol=1e-6)
    assert not np.allclose(vectors, passages, atol=1e-6)


def test_embed_keeps_unicode_readable(run, st_model):
    result = run("embed", "-m", str(st_model), input="naïve café\n")
    assert result.exit_code == 0, result.output
    assert '"text": "naïve café"' in result.stdout


def test_embed_streams_large_inputs_in_chunks(run, st_model, monkeypatch):
    monkeypatch.setattr(cli, "CHUNK", 4)
    lines = [f"text {chr(97 + i)}" for i in range(10)]
    result = run("embed", "-m", str(st_model), "--dtype", "float32", input="\n".join(lines))
    assert [r["text"] for r in json_lines(result.stdout)] == lines
    assert lancedb_baai.cache_info()[0]["calls"] >= 3  # one model call per chunk (plus the up-front load)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["missing.txt"], 1, "input file 'missing.txt' does not exist"),
    (["-d", "gpu"], 2, "use one of ['auto', 'cpu', 'cuda', 'cuda:N', 'mps']"),
    (["--dtype", "int8"], 2, "dtype 'int8' is not supported"),
    (["--batch-size", "0"], 2, "--batch-size"),
])
def test_embed_rejects_bad_input_with_a_message(run, st_model, args, code, message):
    result = run("embed", "-m", str(st_model), *args, input="x\n")
    assert result.exit_code == code
    assert message in _unboxed(result.stderr)
    assert "Traceback" not in result.output


def test_embed_with_a_reranker_says_what_to_use(run, cross_encoder):
    result = run("embed", "-m", str(cross_encoder), input="x\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "is a cross-encoder reranker" in result.stderr
    assert "Traceback" not in result.output


def test_embed_unknown_hub_model_offline(run, empty_hub):
    result = run("embed", "-m", "BAAI/bge-small-en-v1.5", input="x\n")
    assert result.exit_code == 1
    assert "lancedb-baai download BAAI/bge-small-en-v1.5" in result.stderr


# --- rerank ------------------------------------------------------------------------------------

def test_rerank_scores_match_the_library_in_input_order(run, cross_encoder):
    query = "anonymous functions"
    result = run("rerank", "-q", query, "-m", str(cross_encoder), "--dtype", "float32", input="\n".join(PASSAGES))
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [r["text"] for r in records] == PASSAGES
    expected = BAAIRerankFunction(name=str(cross_encoder), dtype="float32").score(query, PASSAGES)
    np.testing.assert_allclose([r["score"] for r in records], expected, atol=1e-6)


def test_rerank_sort_and_normalize(run, cross_encoder):
    query = "anonymous functions"
    raw = json_lines(run("rerank", "-q", query, "-m", str(cross_encoder), "--dtype", "float32",
                         input="\n".join(PASSAGES)).stdout)
    result = run("rerank", "-q", query, "-m", str(cross_encoder), "--dtype", "float32", "--sort", "--normalize",
                 input="\n".join(PASSAGES))
    assert result.exit_code == 0, result.output
    ranked = json_lines(result.stdout)
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    expected = {r["text"]: 1 / (1 + math.exp(-r["score"])) for r in raw}
    assert sorted(r["text"] for r in ranked) == sorted(PASSAGES)
    for r in ranked:
        assert r["score"] == pytest.approx(expected[r["text"]], abs=1e-6)


def test_rerank_needs_a_query(run, cross_encoder):
    missing = run("rerank", "-m", str(cross_encoder), input="x\n")
    assert missing.exit_code == 2 and "--query" in missing.stderr
    empty = run("rerank", "-q", "  ", "-m", str(cross_encoder), input="x\n")
    assert empty.exit_code == 1 and "--query is empty" in empty.stderr


def test_rerank_with_an_embedder_says_what_to_use(run, st_model):
    result = run("rerank", "-q", "x", "-m", str(st_model), input="x\n")
    assert result.exit_code == 1
    assert "not a cross-encoder reranker" in result.stderr and "Traceback" not in result.output


def test_the_benchmark_runner_is_not_a_command_of_the_package(run):
    """The wheel ships no benchmarks: their runner is benchmarks/run_all.py (`make bench`)."""
    result = run("bench")
    assert result.exit_code == 2 and "No such command" in result.output
    assert not hasattr(cli, "benchmarks_dir")


def test_cli_errors_name_cli_flags_not_keywords(run, tmp_path):
    result = run("embed", "-m", str(tmp_path / "missing-model"), input="x\n")
    assert result.exit_code == 1
    assert "Pass -m/--model a directory" in result.stderr and "name=" not in result.stderr


@pytest.mark.parametrize("command", ["embed", "rerank"])
def test_input_that_is_not_utf8_is_named_by_line(run, st_model, cross_encoder, command):
    model = st_model if command == "embed" else cross_encoder
    args = [command, "-m", str(model)] + (["-q", "sort"] if command == "rerank" else [])
    result = CliRunner().invoke(cli.app, args, input=b"fine line\ncaf\xe9 latin-1\n")
    assert result.exit_code == 1
    assert "line 2 of stdin is not valid UTF-8 (byte 0xe9 at column 4)" in result.stderr
    assert "iconv" in result.stderr and "Traceback" not in result.output
