"""ONNX Runtime and OpenVINO backends: fidelity to torch float32, one load, one export, no torch, the gate, "auto"."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

import lancedb_baai
from lancedb_baai import BAAIEmbeddings, BAAIRerankFunction
from lancedb_baai.engines import choice as _backends
from lancedb_baai.models import exports as _export, fidelity as _fidelity
from lancedb_baai.runtimes import base as _runtimes
from lancedb_baai.runtimes.onnx import ONNX, packed_dir
from lancedb_baai.runtimes.openvino import OpenVINORuntime, native_bf16 as openvino_bf16

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

EXPORTED = ("onnx", "openvino")
TEXTS = ["hello world", "a longer sentence about the python language and its tables", "x",
         "lancedb stores vectors " * 12]


pytestmark = pytest.mark.usefixtures("own_export_cache")


def _auto_env() -> dict[str, str]:
    """The environment of a child process in which "auto" means auto."""
    return {k: v for k, v in os.environ.items() if k != _backends.BACKEND_ENV}


def _torch_vectors(model, texts=TEXTS, **options) -> np.ndarray:
    return np.array(BAAIEmbeddings(name=str(model), backend="torch", dtype="float32", **options)
                    .generate_embeddings(texts))


@pytest.mark.parametrize("backend", EXPORTED)
@pytest.mark.parametrize("layout", ["sharp_st_model", "sharp_plain_model"])
def test_fp32_matches_torch_float32(backend, layout, request):
    model = request.getfixturevalue(layout)
    for normalize in (True, False):
        ours = BAAIEmbeddings(name=str(model), backend=backend, precision="fp32", normalize=normalize)
        vectors = np.array(ours.generate_embeddings(TEXTS))
        reference = _torch_vectors(model, normalize=normalize)
        assert np.abs(vectors - reference).max() <= 1e-4, (backend, layout, normalize)
        query = np.array(ours.compute_query_embeddings("what is lancedb?"))
        reference_query = np.array(BAAIEmbeddings(name=str(model), backend="torch", dtype="float32",
                                                  normalize=normalize).compute_query_embeddings("what is lancedb?"))
        assert np.abs(query - reference_query).max() <= 1e-4
    engine = ours.loaded()
    assert engine.key.backend == backend and engine.fidelity["score"] >= _fidelity.THRESHOLDS["float32"]


@pytest.mark.parametrize("backend", EXPORTED)
def test_reranker_keeps_flagreranker_semantics(backend, sharp_cross_encoder):
    """Raw logits (sigmoid when normalized), the passage truncated and a long query capped, as in torch."""
    long_query = " ".join(f"query{i} about tables" for i in range(40))
    passages = ["short passage", "a much longer passage " * 30, "tables and vectors", ""]
    for query in ("what is lancedb?", long_query):
        for normalize in (False, True):
            options = {"name": str(sharp_cross_encoder), "max_length": 48, "normalize": normalize}
            ours = np.array(BAAIRerankFunction(backend=backend, precision="fp32", **options).score(query, passages))
            torch_scores = np.array(BAAIRerankFunction(backend="torch", dtype="float32", **options).score(query, passages))
            assert np.abs(ours - torch_scores).max() <= 1e-4, (backend, normalize, query[:20])
            if normalize:
                assert ((ours > 0) & (ours < 1)).all()
    loaded = BAAIRerankFunction(name=str(sharp_cross_encoder), backend=backend, precision="fp32", max_length=48).loaded()
    assert loaded.fidelity["metric"] == "spearman" and loaded.fidelity["score"] >= 0.999
    lengths = loaded.engine.token_counts(passages, pair_with=[long_query] * len(passages))
    assert max(lengths) > 48  # the inputs really were truncated


def _independent_overlap(candidate: BAAIEmbeddings, model) -> tuple[float, float]:
    """Top-10 overlap and min cosine of ``candidate`` against torch float32, computed here from scratch."""
    passages, queries = _fidelity.gate_set()
    ours = np.array(candidate.generate_embeddings(passages + queries))
    theirs = _torch_vectors(model, passages + queries)
    cosine = (ours * theirs).sum(axis=1)
    hits = []
    for q in range(len(passages), len(passages) + len(queries)):
        top_ours = set(np.argsort(-(ours[:len(passages)] @ ours[q]))[:10])
        top_theirs = set(np.argsort(-(theirs[:len(passages)] @ theirs[q]))[:10])
        hits.append(len(top_ours & top_theirs) / 10)
    return float(np.mean(hits)), float(cosine.min())


@pytest.mark.parametrize("backend", EXPORTED)
def test_int8_is_gated_on_its_measured_figures(backend, sharp_st_model):
    """int8 runs with its figures recorded; the default threshold refuses it exactly when they fall short."""
    accepting = BAAIEmbeddings(name=str(sharp_st_model), backend=backend, precision="int8", min_fidelity=0)
    accepting.generate_embeddings(TEXTS)
    figures = accepting.loaded().fidelity
    overlap, min_cosine = _independent_overlap(accepting, sharp_st_model)
    assert figures["strict_overlap"] == pytest.approx(overlap, abs=1e-6)  # the plain top-10 overlap
    assert figures["score"] >= figures["strict_overlap"]  # near-ties (within float32 rounding) count as agreeing
    assert figures["min_cosine"] == pytest.approx(min_cosine, abs=1e-5)
    assert figures["precision"] == "int8" and figures["texts"] == 250
    default = BAAIEmbeddings(name=str(sharp_st_model), backend=backend, precision="int8")
    if figures["score"] >= _fidelity.THRESHOLDS["int8"] and figures["min_cosine"] >= _fidelity.MIN_COSINE["int8"]:
        default.generate_embeddings(TEXTS)
    else:
        with pytest.raises(_fidelity.FidelityError, match="fails the fidelity gate") as refused:
            default.generate_embeddings(TEXTS)
        assert f"{figures['score']:.3f}" in str(refused.value) and "min_fidelity=0" in str(refused.value)
        assert f"{figures['min_cosine']:.5f}" in str(refused.value)


@pytest.mark.parametrize("backend", EXPORTED)
def test_int8_keeps_the_block_output_projections_in_float(backend, sharp_st_model):
    """The int8 graph quantizes the other linear layers and leaves each block's two output projections float."""
    from lancedb_baai.runtimes.int8 import kept_float

    function = BAAIEmbeddings(name=str(sharp_st_model), backend=backend, precision="int8", min_fidelity=0)
    function.generate_embeddings(TEXTS)
    key = function.engine_key()
    directory = _runtimes.get(backend).export_dir(key.kind, key.model, _weights(sharp_st_model), key.dtype)
    quantized, kept = _int8_layers(backend, directory)
    layers = 2  # the tiny model's blocks
    assert len(kept) == 2 * layers and all(kept_float(name) for name in kept), kept
    assert len(quantized) >= 4 * layers and not any(kept_float(name) for name in quantized), quantized


def _int8_layers(backend: str, directory: Path) -> tuple[list[str], list[str]]:
    """Names of the linear layers (a weight as input) that run in int8, and of those left in float."""
    if backend == "onnx":
        import onnx

        graph = onnx.load(str(directory / "model.onnx")).graph
        weights = {i.name for i in graph.initializer}
        quantized = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
        kept = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
        return quantized, kept
    import openvino as ov

    model = ov.Core().read_model(str(directory / "model.xml"))
    quantized, kept = [], []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node()
        if weight.get_type_name() == "Constant":  # float weights
            kept.append(op.get_friendly_name())
        elif _from_constant(weight):  # int8 weights and their scales, or weights fake-quantized
            quantized.append(op.get_friendly_name())
    return quantized, kept


def _from_constant(node) -> bool:
    """Whether ``node`` computes only from constants (a weight's decompression or fake quantization)."""
    inputs = [node.input_value(i).get_node() for i in range(node.get_input_size())]
    return bool(inputs) and all(i.get_type_name() == "Constant" or _from_constant(i) for i in inputs)


def _one_bit(source: Path, target: Path, feeds) -> None:
    """A deliberately broken "quantization": every weight matrix kept as its sign times its mean size."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.ndim == 2 and weights.dtype == np.float32:
            broken = (np.sign(weights) * np.abs(weights).mean()).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(broken, initializer.name))
    onnx.save(model, str(target))


def test_the_gate_refuses_a_broken_quantization(sharp_st_model, monkeypatch, tmp_path):
    monkeypatch.setenv(_export.CACHE_ENV, str(tmp_path / "exports"))
    monkeypatch.setattr(ONNX, "quantizer", _one_bit)
    broken = BAAIEmbeddings(name=str(sharp_st_model), backend="onnx", precision="int8")
    with pytest.raises(_fidelity.FidelityError, match=r"top-10 overlap 0\.\d+") as refused:
        broken.generate_embeddings(TEXTS)
    assert refused.value.figures["score"] < 0.97 and refused.value.threshold == 0.97
    assert not [r for r in lancedb_baai.cache_info() if r["loaded"]]  # nothing refused stays loaded
    # the figures were recorded next to the export: the next process refuses without measuring again
    key = broken.engine_key()
    directory = ONNX.export_dir(key.kind, key.model, _weights(sharp_st_model), key.dtype)
    assert _fidelity.recorded(directory, "int8")["score"] == refused.value.figures["score"]
    # opting out serves it, with its figures shown
    accepted = BAAIEmbeddings(name=str(sharp_st_model), backend="onnx", precision="int8", min_fidelity=0)
    assert len(accepted.generate_embeddings(TEXTS)) == len(TEXTS)
    [record] = [r for r in lancedb_baai.cache_info() if r["loaded"]]
    assert record["backend"] == "onnx" and record["fidelity"]["score"] == refused.value.figures["score"]
    # a stricter function refuses the engine a laxer one loaded
    with pytest.raises(_fidelity.FidelityError):
        BAAIEmbeddings(name=str(sharp_st_model), backend="onnx", precision="int8", min_fidelity=0.5).engine()


def _weights(model) -> str:
    from lancedb_baai.models import fingerprint as _fingerprint

    return _fingerprint.weights(Path(model))["weights"]


def test_one_load_across_table_reopen_and_pickling(sharp_st_model, tmp_path):
    import lancedb
    from lancedb.pydantic import LanceModel, Vector

    fn = BAAIEmbeddings(name=str(sharp_st_model), backend="openvino")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    before = lancedb_baai.load_count()
    db = lancedb.connect(tmp_path / "db")
    db.create_table("docs", schema=Doc).add([{"text": t} for t in TEXTS])
    for _ in range(3):
        table = lancedb.connect(tmp_path / "db").open_table("docs")
        hits = table.search("python tables").limit(2).to_list()
        assert len(hits) == 2
    copy = pickle.loads(pickle.dumps(fn))
    assert np.allclose(copy.generate_embeddings(TEXTS[:1]), fn.generate_embeddings(TEXTS[:1]))
    assert lancedb_baai.load_count() - before == 1
    [record] = lancedb_baai.cache_info()
    assert record["backend"] == "openvino" and record["loads"] == 1 and record["calls"] >= 5
    # the table records which backend and precision made its vectors, and their figures
    stored = table.embedding_functions["vector"].function.stored_provenance()
    assert stored["backend"] == "openvino" and stored["dtype"] == "float32"
    assert stored["fidelity"]["score"] >= 0.999 and stored["fingerprint"]["backend"] == "openvino"


def _embed_in_worker(fn: BAAIEmbeddings) -> tuple[int, list, bool, int]:
    vectors = [fn.generate_embeddings(TEXTS) for _ in range(3)][-1]
    return os.getpid(), np.asarray(vectors).tolist(), "torch" in sys.modules, lancedb_baai.load_count()


@pytest.mark.slow
def test_spawn_pool_loads_once_per_worker_without_torch(sharp_st_model):
    fn = BAAIEmbeddings(name=str(sharp_st_model), backend="openvino")  # onnx: the fresh-child test
    expected = np.array(fn.generate_embeddings(TEXTS))  # exports here; the workers only open it
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_embed_in_worker, [fn] * 6))
    assert len({pid for pid, *_ in results}) >= 1
    for pid, vectors, torch_loaded, loads in results:
        assert np.abs(np.array(vectors) - expected).max() <= 1e-5
        assert not torch_loaded, f"worker {pid} imported torch"
        assert loads == 1, f"worker {pid} loaded {loads} times"


def _fork_embed(fn: BAAIEmbeddings) -> tuple[list, int]:
    return np.asarray(fn.generate_embeddings(TEXTS)).tolist(), lancedb_baai.load_count()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_preload_before_fork_serves_in_children(sharp_st_model):
    fn = BAAIEmbeddings(name=str(sharp_st_model), backend="onnx")
    lancedb_baai.preload(str(sharp_st_model), backend="onnx")
    expected = np.array(fn.generate_embeddings(TEXTS))
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        results = list(pool.map(_fork_embed, [fn] * 4))
    for vectors, loads in results:
        assert np.abs(np.array(vectors) - expected).max() <= 1e-6
        assert loads == 0  # the child serves the parent's engine: no load of its own


_CHILD = textwrap.dedent("""
    import json, sys, time
    start = time.perf_counter()
    import lancedb, lancedb_baai
    fn = lancedb_baai.BAAIEmbeddings(name=sys.argv[1], backend=sys.argv[2])
    vector = fn.generate_embeddings(["a first text"])[0]
    print(json.dumps({"seconds": time.perf_counter() - start, "first": float(vector[0]),
                      "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                      "backend": fn.engine_key().backend, "loads": lancedb_baai.load_count()}))
""")


@pytest.mark.slow
def test_a_loaded_export_leaves_torch_out(minilm):
    expected = {b: BAAIEmbeddings(name=str(minilm), backend=b).generate_embeddings(["a first text"])[0]
                for b in EXPORTED}
    BAAIEmbeddings(name=str(minilm)).engine_key()  # "auto" here gates once and records it
    for backend in ("onnx", "openvino", "auto"):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(minilm), backend], env=_auto_env(),
                             capture_output=True, text=True, timeout=300, check=True).stdout
        child = json.loads(out)
        assert not child["torch"] and not child["transformers"], (backend, child)
        assert child["backend"] in EXPORTED and child["loads"] == 1
        assert child["first"] == pytest.approx(float(expected[child["backend"]][0]), abs=1e-6)


def test_export_never_writes_into_a_read_only_model_dir(sharp_plain_model, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "read-only" / "bge-base-en-v1.5"
    shutil.copytree(sharp_plain_model, model)
    before = sorted((p.relative_to(model).as_posix(), p.stat().st_mtime_ns) for p in model.rglob("*"))
    for path in [model, *model.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    monkeypatch.setenv(_export.CACHE_ENV, str(tmp_path / "exports"))
    try:
        vectors = BAAIEmbeddings(name=str(model), backend="openvino").generate_embeddings(TEXTS)
    finally:
        for path in [model, *model.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert np.abs(np.array(vectors) - _torch_vectors(model)).max() <= 1e-4
    assert sorted((p.relative_to(model).as_posix(), p.stat().st_mtime_ns) for p in model.rglob("*")) == before
    assert list((tmp_path / "exports" / "exports").iterdir())  # the export went to the cache


_EXPORTER = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import lancedb_baai
    fn = lancedb_baai.BAAIEmbeddings(name=sys.argv[1], backend="onnx")
    print(json.dumps(fn.generate_embeddings(["one text", "and another one"])[0].tolist()))
""")


@pytest.mark.slow
def test_two_processes_exporting_at_once_make_one_export(sharp_plain_model, tmp_path):
    env = {**_auto_env(), _export.CACHE_ENV: str(tmp_path / "exports")}
    workers = [subprocess.Popen([sys.executable, "-c", _EXPORTER, str(sharp_plain_model)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second
    logs = "".join(err for _, err in outputs)
    # each of the two exports (the graph, then its copy pre-packed for this CPU) is written by one process
    assert len(re.findall(r"exported embed model \S+ to onnx", logs)) == 1, [err[-2000:] for _, err in outputs]
    assert len(re.findall(r"exported embed model \S+: onnx weights pre-packed", logs)) == 1, logs[-2000:]
    [directory] = [d for d in (tmp_path / "exports" / "exports").rglob("embed-onnx-*") if d.is_dir()]
    assert _export.manifest(directory) is not None
    assert _export.manifest(packed_dir(directory)) is not None
    assert not list(directory.parent.glob(".partial-*")) and not list(directory.glob(".partial-*"))


def test_a_corrupt_export_is_built_again(sharp_plain_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(_export.CACHE_ENV, str(tmp_path / "exports"))
    fn = BAAIEmbeddings(name=str(sharp_plain_model), backend="onnx")
    expected = np.array(fn.generate_embeddings(TEXTS))
    directory = fn.loaded().export
    lancedb_baai.release()
    graph = directory / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # a partial write
    assert _export.manifest(directory) is None
    with caplog.at_level("WARNING", logger="lancedb_baai.models.exports"):
        again = np.array(BAAIEmbeddings(name=str(sharp_plain_model), backend="onnx").generate_embeddings(TEXTS))
    assert "building it again" in caplog.text
    assert np.abs(again - expected).max() <= 1e-6 and _export.manifest(directory) is not None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_auto_gives_one_answer_across_ten_processes_under_load(minilm):
    """A real model (bf16 is faithful on it where native; the tiny random ones are not)."""
    env = _auto_env()
    decide = ("import json, sys, lancedb_baai; c = lancedb_baai.BAAIEmbeddings(name=sys.argv[1]).backend_choice(); "
              "print(json.dumps([c.backend, c.dtype, c.reason]))")
    first = subprocess.run([sys.executable, "-c", decide, str(minilm)], env=env, capture_output=True,
                           text=True, timeout=300, check=True).stdout  # the first one on this host gates
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        workers = [subprocess.Popen([sys.executable, "-c", decide, str(minilm)], env=env,
                                    stdout=subprocess.PIPE, text=True) for _ in range(10)]
        answers = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for process in busy:
            process.kill()
            process.wait(timeout=60)
    assert all(w.returncode == 0 for w in workers)
    assert set(answers) == {first}, set(answers)
    backend, dtype, reason = json.loads(first)
    assert reason.startswith(f"auto: {backend} {dtype}")
    expected = "bfloat16" if openvino_bf16() else "float32"
    assert (backend, dtype) == ("openvino", expected)


def test_auto_without_the_runtimes_is_torch_and_says_why(sharp_st_model, monkeypatch):
    monkeypatch.delenv(_backends.BACKEND_ENV, raising=False)
    monkeypatch.setattr(_backends, "native_bf16_flags", lambda: ())  # the AVX2 class: fp32 candidates first
    monkeypatch.setattr(_backends, "openvino_bf16", lambda: False)
    for name in ("onnx", "openvino"):
        runtime = _runtimes.get(name)
        monkeypatch.setattr(runtime, "missing", lambda rt=runtime: f"{rt.module} is not installed "
                                                                  f"(pip install 'lancedb_baai[{rt.extra}]')")
    _backends.forget()
    try:
        choice = BAAIEmbeddings(name=str(sharp_st_model)).backend_choice()
    finally:
        _backends.forget()
    assert choice.backend == "torch"
    assert "onnxruntime is not installed" in choice.reason and "lancedb_baai[openvino]" in choice.reason


def test_auto_takes_torch_for_bge_m3_and_remote_code():
    assert _backends.candidates("m3", "cpu", None, "auto") == [("torch", None)]
    assert _backends.candidates("embed", "cuda", None, "auto") == [("torch", None)]
    assert _backends.candidates("embed", "cpu", None, "auto", trust_remote_code=True) == [("torch", None)]
    assert _backends.candidates("embed", "cpu", "int8", "auto") == [("openvino", "int8"), ("onnx", "int8")]


@pytest.mark.parametrize("options, message", [
    ({"backend": "onnx", "device": "cuda"}, "runs on the CPU"),
    ({"backend": "torch", "precision": "int8"}, "runs on ONNX Runtime or OpenVINO"),
    ({"backend": "onnx", "precision": "bf16"}, "ONNX Runtime has no bf16"),
    ({"backend": "openvino", "dtype": "float16"}, "no float16"),
    ({"backend": "openvino", "precision": "fp32", "dtype": "bfloat16"}, "disagree"),
])
def test_impossible_combinations_say_what_to_do(options, message, sharp_st_model):
    if options.get("precision") == "bf16" and openvino_bf16() and options["backend"] == "openvino":
        pytest.skip("this CPU runs bf16 natively")
    with pytest.raises(ValueError, match=message):
        BAAIEmbeddings(name=str(sharp_st_model), **options).engine_key()


def test_bf16_on_a_cpu_without_it_is_refused_not_run_as_float32(sharp_st_model):
    if openvino_bf16():
        pytest.skip("this CPU runs bf16 natively: the bf16 path is exercised by the fidelity tests")
    with pytest.raises(ValueError, match="needs a CPU with native bf16"):
        BAAIEmbeddings(name=str(sharp_st_model), backend="openvino", precision="bf16").engine_key()


def test_unknown_backend_and_precision_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"backend 'tensorrt' is not supported; use one of \['auto'"):
        BAAIEmbeddings(backend="tensorrt")
    with pytest.raises(ValueError, match=r"precision 'fp8' is not supported"):
        BAAIRerankFunction(precision="fp8")
    with pytest.raises(ValueError, match="min_fidelity"):
        BAAIEmbeddings(min_fidelity=1.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn needs a Unix")
def test_a_two_worker_server_serves_swaps_and_rolls_back_on_openvino(sharp_st_model, sharp_plain_model,
                                                                    sharp_cross_encoder, tmp_path):
    pytest.importorskip("gunicorn")
    sys.path.insert(0, str(Path(__file__).parent))
    from _serve import Server, wait_for

    def local(model):
        return BAAIEmbeddings(name=str(model), backend="openvino").generate_embeddings(["x", "a longer text"])

    expected = {m: np.array(local(m)) for m in (sharp_st_model, sharp_plain_model)}
    scores = BAAIRerankFunction(name=str(sharp_cross_encoder), backend="openvino").score("q", ["a", "b c"])
    server = Server(["--embed", sharp_st_model, "--rerank", sharp_cross_encoder, "--backend", "openvino",
                     "--workers", 2, "--state-dir", tmp_path / "state"], tmp_path / "server.log").start()
    try:
        def embedded(version):
            response = server.post("/v1/embeddings", {"model": str(sharp_st_model), "input": ["x", "a longer text"]})
            assert response.status_code == 200, response.text
            assert response.headers["x-model-version"] == version
            return np.array([row["embedding"] for row in response.json()["data"]])

        def workers_at(generation):
            records = server.engines()["workers"]
            return records if len(records) == 2 and all(w["generation"] >= generation for w in records) else None

        assert all(w["load_count"] == 0 for w in wait_for(lambda: workers_at(0), timeout=60))
        for _ in range(4):
            assert np.abs(embedded(f"{sharp_st_model}@0") - expected[sharp_st_model]).max() <= 1e-5
        reranked = server.post("/rerank", {"model": str(sharp_cross_encoder), "query": "q", "texts": ["a", "b c"],
                                           "raw_scores": True})
        assert reranked.status_code == 200, reranked.text
        got = sorted((r["index"], r["score"]) for r in reranked.json())  # TEI's /rerank shape
        assert np.abs(np.array([s for _, s in got]) - np.array(scores)).max() <= 1e-5
        swapped = server.post("/admin/swap", {"model": str(sharp_st_model), "new_model": str(sharp_plain_model)},
                              headers=server.admin())
        assert swapped.status_code == 200, swapped.text
        wait_for(lambda: workers_at(swapped.json()["generation"]), timeout=60)
        for _ in range(4):
            assert np.abs(embedded(f"{sharp_plain_model}@1") - expected[sharp_plain_model]).max() <= 1e-5
        back = server.post("/admin/rollback", {"model": str(sharp_st_model)}, headers=server.admin())
        assert back.status_code == 200, back.text
        wait_for(lambda: workers_at(back.json()["generation"]), timeout=60)
        for _ in range(4):
            assert np.abs(embedded(f"{sharp_st_model}@2") - expected[sharp_st_model]).max() <= 1e-5
    finally:
        server.stop()


@pytest.mark.parametrize("backend", EXPORTED)
def test_bge_m3_dense_runs_on_the_backends_and_its_other_outputs_stay_on_torch(backend, models_root, monkeypatch):
    from lancedb_baai import BGEM3ColbertEmbeddings, testing

    model = models_root / "backends" / "BAAI" / "bge-m3"
    if not model.exists():
        testing.build_m3_model(model)
    dense = BAAIEmbeddings(name=str(model), backend=backend)
    torch_dense = BAAIEmbeddings(name=str(model), backend="torch", dtype="float32")
    assert torch_dense.engine_key().kind == "m3" and dense.engine_key().kind == "embed"
    assert np.abs(np.array(dense.generate_embeddings(TEXTS)) - np.array(torch_dense.generate_embeddings(TEXTS))).max() <= 1e-4
    monkeypatch.setenv(_backends.BACKEND_ENV, backend)  # a process-wide preference leaves bge-m3 on torch
    _backends.forget()
    key = BAAIEmbeddings(name=str(model)).engine_key()
    _backends.forget()
    assert (key.kind, key.backend) == ("m3", "torch")
    with pytest.raises(ValueError, match="sparse and ColBERT outputs need backend='torch'"):
        BGEM3ColbertEmbeddings(name=str(model), backend=backend).engine_key()


@pytest.mark.skipif(not openvino_bf16(), reason="this CPU has no native bf16: bf16 is refused here "
                    "(test_bf16_on_a_cpu_without_it_is_refused_not_run_as_float32)")
def test_bf16_passes_its_gate_where_native(minilm):
    """A real model: bf16 keeps its neighbours (a tiny random model's near-equal scores do not survive it)."""
    fn = BAAIEmbeddings(name=str(minilm), backend="openvino", precision="bf16")
    vectors = np.array(fn.generate_embeddings(TEXTS))
    assert fn.loaded().fidelity["score"] >= _fidelity.THRESHOLDS["bfloat16"]
    assert np.abs(vectors - _torch_vectors(minilm)).max() <= 5e-2


def test_info_lists_the_exports_with_their_figures(sharp_cross_encoder):
    from lancedb_baai import cli

    BAAIRerankFunction(name=str(sharp_cross_encoder), backend="onnx").score("q", ["a"])
    report = cli.host_report()
    rows = [r for r in report["exports"] if r["model"] == str(sharp_cross_encoder) and r["backend"] == "onnx"]
    assert rows and rows[0]["fidelity"].startswith("Spearman 1.0000")
    assert report["backends"]["installed"] == {"onnx": True, "openvino": True}
    assert report["backends"]["auto_order"][-1] == "torch auto dtype"
    assert "exports on this machine" in cli._format_report(report)


def test_auto_opens_a_gated_export_once(minilm, monkeypatch):
    BAAIEmbeddings(name=str(minilm), backend="openvino").engine()  # exported, gated, recorded
    lancedb_baai.release()
    monkeypatch.delenv(_backends.BACKEND_ENV, raising=False)
    opened, real = [], OpenVINORuntime.open
    monkeypatch.setattr(OpenVINORuntime, "open", lambda self, *a, **k: opened.append(a[0]) or real(self, *a, **k))
    _backends.forget()
    try:
        fn = BAAIEmbeddings(name=str(minilm))
        fn.generate_embeddings(TEXTS)
        assert fn.engine_key().backend in EXPORTED
    finally:
        _backends.forget()
    assert len(opened) == 1, opened  # "auto" read the recorded figures; only the cache opened it
