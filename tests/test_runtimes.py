"""The runtime interface: a runtime registered from outside the package serves every function.

Also the first use of an exported backend on a machine: announced, the weights read once,
and a table declared from a schema before it loads nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import lancedb
import numpy as np
import pytest
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction
from lancedb_baai.runtimes import base

TEXTS = ["hello world", "a longer sentence about the python language and its tables", "x"]


class _RecordingSession(base.Session):
    """Runs the kind's torch module, after checking that it was given padded int64 arrays only."""

    def __init__(self, module, inputs, seen):
        self.module, self.inputs, self.seen = module, inputs, seen

    def run(self, feeds):
        import torch

        assert set(feeds) == set(self.inputs)
        assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 2 for a in feeds.values())
        self.seen.append({name: array.shape for name, array in feeds.items()})
        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(feeds[name]) for name in self.inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(o.numpy() for o in outputs)


class RecordingRuntime(base.Runtime):
    """A runtime defined here, in the test file: nothing in the package names it."""

    name = "recording-test"

    def __init__(self):
        self.seen = []

    def precisions(self):
        return ("float32",)

    def open(self, request, prepared):
        model = request.build()
        return _RecordingSession(model.module, model.graph.inputs, self.seen), model.graph


@pytest.fixture(scope="module")
def recording():
    return base.register(RecordingRuntime())


def test_a_runtime_registered_from_outside_embeds_and_reranks(recording, sharp_st_model, sharp_cross_encoder):
    assert "recording-test" in base.names()
    fn = BAAIEmbeddings(name=str(sharp_st_model), backend="recording-test")
    ours = np.array(fn.generate_embeddings(TEXTS))
    torch = np.array(BAAIEmbeddings(name=str(sharp_st_model), backend="torch", dtype="float32")
                     .generate_embeddings(TEXTS))
    assert np.abs(ours - torch).max() <= 1e-6 and recording.seen
    reranker = BAAIRerankFunction(name=str(sharp_cross_encoder), backend="recording-test", max_length=32)
    before = len(recording.seen)
    scores = np.array(reranker.score("a query", ["a passage", "another, much longer passage " * 10]))
    expected = np.array(BAAIRerankFunction(name=str(sharp_cross_encoder), backend="torch", dtype="float32",
                                           max_length=32).score("a query", ["a passage",
                                                                            "another, much longer passage " * 10]))
    assert np.abs(scores - expected).max() <= 1e-6 and len(recording.seen) > before
    assert max(shape["input_ids"][1] for shape in recording.seen[before:]) <= 32  # truncated above the runtime
    backends = {r["backend"] for r in lancedb_baai.cache_info()}
    assert "recording-test" in backends


def test_an_unknown_backend_lists_the_registered_ones(recording):
    with pytest.raises(ValueError, match=r"backend 'nope' is not supported; use one of .*'recording-test'"):
        BAAIEmbeddings(backend="nope")


_FIRST_USE = textwrap.dedent("""
    import json, sys
    import transformers
    loads = []
    for name in ("AutoModel", "AutoTokenizer"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__
        def counted(klass, *args, _original=original, _name=name, **kwargs):
            loads.append(_name)
            return _original(klass, *args, **kwargs)
        setattr(cls, "from_pretrained", classmethod(counted))
    import lancedb, lancedb_baai
    from lancedb.pydantic import LanceModel, Vector
    fn = lancedb_baai.BAAIEmbeddings(name=sys.argv[1], backend="openvino")
    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()
    db = lancedb.connect(sys.argv[2])
    table = db.create_table("docs", schema=Doc)
    after_create = lancedb_baai.load_count()
    table.add([{"text": t} for t in ["one text", "and another one", "a third"]])
    stored = lancedb.connect(sys.argv[2]).open_table("docs").embedding_functions["vector"].function.stored_provenance()
    print(json.dumps({"after_create": after_create, "loads": lancedb_baai.load_count(),
                      "weights_read": loads.count("AutoModel"), "stored": stored}))
""")


@pytest.mark.slow
def test_first_use_on_a_new_machine_is_announced_loads_once_and_a_schema_loads_nothing(sharp_plain_model, tmp_path):
    pytest.importorskip("openvino")
    env = {**__import__("os").environ, "LANCEDB_BAAI_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", _FIRST_USE, str(sharp_plain_model), str(tmp_path / "db")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["after_create"] == 0  # declaring the schema and creating the table loaded no model
    assert report["loads"] == 1 and report["weights_read"] == 1  # traced, measured and served from one read
    stored = report["stored"]  # bf16 where native and faithful for this model, else float32
    assert stored["backend"] == "openvino" and stored["dtype"] in ("float32", "bfloat16")
    assert stored["fidelity"]["score"] >= {"float32": 0.999, "bfloat16": 0.99}[stored["dtype"]]
    assert stored["fingerprint"]["backend"] == "openvino"
    announced = [line for line in out.stderr.split("\n") if "preparing" in line]  # one line, redrawn with \r
    assert len(announced) == 1 and "for openvino fp32 on this machine, once" in announced[0]
    assert "lancedb-baai export" in announced[0] and "Warning" not in out.stderr


@pytest.mark.slow
def test_export_prepares_a_machine_ahead_of_time(sharp_plain_model, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {**__import__("os").environ, "LANCEDB_BAAI_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "lancedb_baai", "export", str(sharp_plain_model), "--backend", "onnx",
               "--precision", "fp32"]
    made = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    record = json.loads(made.stdout)
    assert (record["backend"], record["dtype"], record["passes"]) == ("onnx", "float32", True)
    assert record["fidelity"]["score"] >= 0.999 and record["export"].startswith(str(tmp_path / "cache"))
    child = textwrap.dedent("""
        import json, sys, lancedb_baai
        fn = lancedb_baai.BAAIEmbeddings(name=sys.argv[1], backend="onnx", precision="fp32")
        fn.generate_embeddings(["x"])
        print(json.dumps({"torch": "torch" in sys.modules, "loads": lancedb_baai.load_count()}))
    """)
    used = subprocess.run([sys.executable, "-c", child, str(sharp_plain_model)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert used.returncode == 0, used.stderr[-3000:]
    assert json.loads(used.stdout) == {"torch": False, "loads": 1}  # the prepared machine needs no torch
    assert "preparing" not in used.stderr


def test_a_kind_names_its_parts():
    from lancedb_baai.engines import kinds
    from lancedb_baai.functions.m3 import BGEM3Embeddings

    assert kinds.get("embed").function() is BAAIEmbeddings
    assert kinds.get("rerank").function() is BAAIRerankFunction and not kinds.get("rerank").makes_vectors
    assert kinds.get("m3").function() is BGEM3Embeddings and kinds.get("m3").group == "embed"
    assert not kinds.get("m3").exportable
    with pytest.raises(ValueError, match=r"kind 'colbert' is not supported; use one of \['embed', 'rerank', 'm3'\]"):
        kinds.get("colbert")


def test_a_table_declared_on_torch_records_its_backend_without_loading(sharp_st_model, tmp_path):
    fn = BAAIEmbeddings(name=str(sharp_st_model), backend="torch", dtype="float32")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    before = lancedb_baai.load_count()
    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    assert lancedb_baai.load_count() == before
    stored = table.embedding_functions["vector"].function.stored_provenance()
    assert (stored["backend"], stored["dtype"]) == ("torch", "float32")


def test_auto_serves_the_reference_it_measured_when_no_export_passes(sharp_st_model, monkeypatch, tmp_path):
    """Every export refused: torch float32 serves, from the very module the exports were measured against."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from lancedb_baai.engines import choice

    monkeypatch.delenv(choice.BACKEND_ENV, raising=False)
    monkeypatch.setenv("LANCEDB_BAAI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choice.fidelity, "passes", lambda *args: False)
    choice.forget()
    try:
        fn = BAAIEmbeddings(name=str(sharp_st_model))
        before = lancedb_baai.load_count()
        vectors = np.array(fn.generate_embeddings(TEXTS))
        choice_made = fn.backend_choice()
    finally:
        choice.forget()
    assert (choice_made.backend, choice_made.dtype) == ("torch", "float32")
    assert "fails the gate" in choice_made.reason
    assert lancedb_baai.load_count() - before == 1  # the reference was adopted, not loaded again
    torch = np.array(BAAIEmbeddings(name=str(sharp_st_model), backend="torch", dtype="float32")
                     .generate_embeddings(TEXTS))
    assert np.abs(vectors - torch).max() <= 1e-6
