"""The engine factory: quiet loads, broken model directories named, remote code only when allowed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import lancedb
import lancedb_baai
from lancedb_baai.models import hub as _hub, trust as _trust
from lancedb_baai.functions.config import METADATA_KEY


@pytest.fixture
def copy_of(tmp_path, st_model):
    def make(name: str = "bge-small-en-v1.5") -> Path:
        return Path(shutil.copytree(st_model, tmp_path / "copies" / name))

    return make


def _table(tmp_path, model: Path, rows: int = 2):
    """A table filled by a working model, then repointed at ``model`` (a copy that may get broken)."""
    fn = get_registry().get("local-baai").create(name=str(model), dtype="float32")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": f"passage {i}"} for i in range(rows)])
    lancedb_baai.release()
    return table


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


BREAKERS = {
    "truncated weights": (lambda m: _truncate(m / "model.safetensors"), "model.safetensors' is .* bytes but its header"),
    "weights without header": (lambda m: (m / "model.safetensors").write_bytes(b"\x00" * 5), "has no readable header"),
    "garbage config": (lambda m: (m / "config.json").write_text("{garbage"), "cannot read .*config.json"),
    "garbage tokenizer": (lambda m: (m / "tokenizer.json").write_text("not json"), "cannot read .*tokenizer.json"),
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_a_broken_model_is_named_and_the_table_keeps_its_rows(case, tmp_path, copy_of):
    model = copy_of()
    table = _table(tmp_path, model)
    breaker, pattern = BREAKERS[case]
    breaker(model)
    with pytest.raises(Exception, match=pattern) as info:
        table.add([{"text": "one more"}])
    assert "download the model again" in str(info.value)
    assert table.count_rows() == 2
    assert lancedb.connect(tmp_path / "db").open_table("docs").count_rows() == 2


def test_check_files_passes_a_whole_model(st_model, minilm):
    _hub.check_files(Path(st_model))
    _hub.check_files(Path(minilm))


def test_a_broken_config_is_named_when_the_schema_asks_for_the_width(copy_of):
    model = copy_of("bge-base-en-v1.5-broken")
    (model / "config.json").write_text("[1, 2")
    with pytest.raises(_hub.BrokenModelError, match="config.json"):
        lancedb_baai.BAAIEmbeddings(name=str(model)).ndims()


def test_loads_are_quiet_and_log_one_line(capfd, caplog, plain_model, cross_encoder):
    with caplog.at_level(logging.INFO, logger="lancedb_baai"):
        lancedb_baai.BAAIEmbeddings(name=str(plain_model)).generate_embeddings(["x"])
        lancedb_baai.BAAIRerankFunction(name=str(cross_encoder)).score("q", ["x"])
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "LOAD REPORT" not in err and "%|" not in err
    loads = [r.getMessage() for r in caplog.records if r.name == "lancedb_baai.engines.factory"]
    assert len(loads) == 2
    assert loads[0].startswith(f"loaded embed model {plain_model} on cpu as ") and loads[0].endswith("s")


# ------------------------------------------------------------------------------------ remote code

CUSTOM_CODE = '''
import os
from pathlib import Path
from transformers import BertModel

Path(os.environ["MARKER"]).write_text("remote code ran")


class CustomModel(BertModel):
    pass
'''


@pytest.fixture
def remote_code_table(tmp_path, plain_model):
    """A table whose stored configuration asks for trust_remote_code on a model that ships code."""
    model = Path(shutil.copytree(plain_model, tmp_path / "sent" / "model-with-code"))
    (model / "custom_model.py").write_text(CUSTOM_CODE)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "custom_model.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    fn = lancedb_baai.BAAIEmbeddings(name=str(plain_model))

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("docs", schema=Doc)
    table.add([{"text": "a passage"}])
    stored = json.loads(table.schema.metadata[b"embedding_functions"])
    stored[0]["model"].update(name=str(model), trust_remote_code=True)
    stored[0]["model"].pop(METADATA_KEY)  # written by hand, as a sender would: no fingerprint to guard
    schema = table.schema.with_metadata({b"embedding_functions": json.dumps(stored).encode()})
    db.create_table("sent", schema=schema)
    return tmp_path / "db", model


SEARCH = textwrap.dedent("""
    import sys, lancedb, lancedb_baai
    table = lancedb.connect(sys.argv[1]).open_table("sent")
    try:
        table.search("a passage").limit(1).to_list()
        print("searched")
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


def _search_in_fresh_process(db: Path, marker: Path, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != _trust.ALLOW_REMOTE_CODE_ENV}
    environ.update(MARKER=str(marker), **env)
    out = subprocess.run([sys.executable, "-c", SEARCH, str(db)], capture_output=True, text=True,
                         timeout=180, env=environ)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_a_table_cannot_make_this_process_run_model_code(remote_code_table, tmp_path):
    db, model = remote_code_table
    marker = tmp_path / "marker"
    out = _search_in_fresh_process(db, marker)
    assert "PermissionError" in out and "trust_remote_code=True" in out
    assert f"lancedb_baai.allow_remote_code({str(model)!r})" in out and _trust.ALLOW_REMOTE_CODE_ENV in out
    assert not marker.exists()


@pytest.mark.slow
def test_remote_code_runs_once_this_process_allows_that_model(remote_code_table, tmp_path):
    db, model = remote_code_table
    marker = tmp_path / "marker"
    out = _search_in_fresh_process(db, marker, **{_trust.ALLOW_REMOTE_CODE_ENV: str(model)})
    assert "searched" in out and marker.read_text() == "remote code ran"
