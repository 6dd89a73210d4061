"""Scale-out ingest on Ray Data: one load per actor, the same table as ``table.add``, all or nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lancedb.embeddings import EmbeddingFunctionConfig, get_registry
from lancedb.pydantic import LanceModel, Vector

import lancedb_baai
from lancedb_baai import testing
from lancedb_baai.ray import DEBUG_COLUMNS, BAAIEmbedBatches, BAAIRerankBatches, BadRowError, actor_options, embed_to_lance, read_source, require_ray, target_schema

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 240
ROWS = 96
BATCH = 16  # 6 batches over 2 actors


def make(name, kind="local-baai", **options):
    options = {"device": "cpu", "dtype": "float32", **options}
    return get_registry().get(kind).create(name=str(name), **options)


def corpus(rows: int = ROWS) -> pa.Table:
    """Python reference paragraphs with an id, in Arrow.

    Paragraphs with the digits 8 or 9 are left out: the tiny test vocabulary repeats two
    words, so "##8"/"##9" get ids past the model's embedding table (see testing.write_vocab).
    """
    texts = [r for r in testing.python_reference_paragraphs(limit=4 * rows)
             if "8" not in r["text"] and "9" not in r["text"]][:rows]
    return pa.table({"id": pa.array(range(len(texts)), pa.int64()),
                     "topic": [r["topic"] for r in texts], "text": [r["text"] for r in texts]})


def vectors_by_id(table: pa.Table) -> np.ndarray:
    table = table.sort_by("id")
    return np.stack(table["vector"].to_numpy(zero_copy_only=False))


def run_python(code: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray for the whole session; actors are separate processes with their own caches."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ray-source")
    table = corpus()
    pq.write_table(table, directory / "docs.parquet")
    return directory / "docs.parquet", table


@pytest.fixture(scope="module")
def ingested(ray_session, source, st_model, tmp_path_factory):
    """One embed_to_lance run on 2 actors, shared by the tests that read its result."""
    path, table = source
    uri = tmp_path_factory.mktemp("ray-db")
    fn = make(st_model)
    driver_loads = lancedb_baai.load_count()
    report = embed_to_lance(path, uri, "docs", fn, concurrency=2, batch_size=BATCH)
    return {"report": report, "uri": uri, "fn": fn, "table": table,
            "driver_loads": lancedb_baai.load_count() - driver_loads}


# --- the callable classes, in this process ---------------------------------------------------


def test_embed_batches_append_the_functions_vectors(st_model):
    fn = make(st_model)
    batch = corpus(20)
    mapper = BAAIEmbedBatches(fn.model_dump(), vector_column="emb")
    out = mapper(batch)
    assert out.column_names == ["id", "topic", "text", "emb"]
    assert out.schema.field("emb").type == pa.list_(pa.float32(), fn.ndims())
    assert out.select(["id", "topic", "text"]).equals(batch)
    expected = np.stack(fn.generate_embeddings(batch["text"].to_pylist()))
    np.testing.assert_allclose(np.stack(out["emb"].to_numpy(zero_copy_only=False)), expected, atol=1e-6)


def test_embed_batches_load_once_per_process(st_model):
    start = lancedb_baai.load_count()
    mapper = BAAIEmbedBatches(make(st_model), debug=True)
    assert lancedb_baai.load_count() - start == 1  # loaded when built, before any batch
    outs = [mapper(corpus(30).slice(i, 10)) for i in range(0, 30, 10)]
    assert lancedb_baai.load_count() - start == 1
    (record,) = mapper.cache_info()
    assert record["loads"] == 1 and record["calls"] >= 4 and record["pid"] == os.getpid()
    for out in outs:
        assert set(out["baai_pid"].to_pylist()) == {os.getpid()}
        assert set(out["baai_load_count"].to_pylist()) == {lancedb_baai.load_count()}
        assert out.column_names[-3:] == list(DEBUG_COLUMNS)


def test_rerank_batches_match_the_function_per_query(cross_encoder):
    fn = make(cross_encoder, "local-baai-rerank")
    passages = corpus(12)["text"].to_pylist()
    queries = ["sort a list", "open a file", "sort a list", "define a class"] * 3
    batch = pa.table({"query": queries, "passage": passages})
    out = BAAIRerankBatches(fn, score_column="s")(batch)
    assert out.schema.field("s").type == pa.float32()
    for query in set(queries):
        rows = [i for i, q in enumerate(queries) if q == query]
        expected = fn.score(query, [passages[i] for i in rows])
        np.testing.assert_allclose(out["s"].to_numpy()[rows], expected, atol=1e-6)


def test_null_row_names_column_row_and_values(st_model):
    batch = corpus(5)
    texts = batch["text"].to_pylist()
    texts[3] = None
    batch = batch.set_column(2, "text", pa.array(texts, pa.string()))
    with pytest.raises(BadRowError, match=r"column 'text' is null at row 3 of a 5-row batch \(id=3, topic="):
        BAAIEmbedBatches(make(st_model))(batch)


def test_non_string_column_is_refused(st_model):
    batch = pa.table({"text": [1, 2, 3]})
    with pytest.raises(BadRowError, match=r"column 'text' holds int64 values, not strings \(row 0 is text=1\)"):
        BAAIEmbedBatches(make(st_model))(batch)


def test_blank_query_is_refused(cross_encoder):
    batch = pa.table({"query": ["sort", "  "], "passage": ["a list", "a dict"]})
    with pytest.raises(BadRowError, match=r"column 'query' is blank at row 1"):
        BAAIRerankBatches(make(cross_encoder, "local-baai-rerank"))(batch)


def test_wrong_function_type_is_refused(cross_encoder):
    with pytest.raises(TypeError, match="'local-baai' configuration"):
        BAAIEmbedBatches(make(cross_encoder, "local-baai-rerank"))


def test_target_schema_follows_a_lance_model(st_model):
    fn = make(st_model)

    class Doc(LanceModel):
        id: int
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    source = pa.schema([("id", pa.int64()), ("text", pa.string())])
    assert target_schema(source, fn, "text", "vector", Doc) == Doc.to_arrow_schema().remove_metadata()
    assert target_schema(source, fn, "text", "vector").field("vector").type == pa.list_(pa.float32(), 32)
    with pytest.raises(ValueError, match=r"'vector' as fixed_size_list<item: float>\[32\]"):
        target_schema(source, fn, "text", "vector", pa.schema([("vector", pa.list_(pa.float32(), 8))]))
    with pytest.raises(ValueError, match=r"column 'body' not found in the source; columns are \['id', 'text'\]"):
        target_schema(source, fn, "body", "vector")


def test_importing_the_package_does_not_import_ray():
    out = run_python("import sys, lancedb_baai, lancedb_baai.ray; print('ray' in sys.modules)")
    assert out.strip() == "False"


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "lancedb_baai\[ray\]"'):
        require_ray()


def test_unknown_source_format_is_refused(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "docs.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_source(tmp_path / "docs.csv")


# --- resources ---------------------------------------------------------------------------------


def test_actor_options_leave_a_cpu_for_reading_and_writing(ray_session, st_model):
    assert actor_options(make(st_model), concurrency=2) == {"num_cpus": 0.5}
    assert actor_options(make(st_model), concurrency=1) == {"num_cpus": 1.0}
    assert actor_options(make(st_model), 2, num_cpus=2, num_gpus=0) == {"num_cpus": 2.0}


def test_cuda_functions_get_a_gpu_per_actor(ray_session, st_model):
    assert actor_options(make(st_model, device="cuda"), concurrency=2)["num_gpus"] == 1.0
    assert actor_options(make(st_model, device="cuda:0"), concurrency=2)["num_gpus"] == 1.0
    assert "num_gpus" not in actor_options(make(st_model, device="auto"), concurrency=2)  # no GPU here


# --- embed_to_lance on a local Ray -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_actors_load_the_model_once_each(ingested):
    report = ingested["report"]
    assert report.rows == ROWS
    assert len(report.actors) == 2
    assert [actor["load_count"] for actor in report.actors] == [1, 1]
    assert report.loads == 2
    assert sum(actor["rows"] for actor in report.actors) == ROWS
    assert all(actor["rows"] >= BATCH for actor in report.actors)  # each took several batches
    assert len({actor["pid"] for actor in report.actors} | {os.getpid()}) == 3
    assert ingested["driver_loads"] == 0  # the driver reads dims from config files only


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_table_matches_the_table_add_path(ingested, tmp_path):
    fn, source = ingested["fn"], ingested["table"]
    written = lancedb.connect(ingested["uri"]).open_table("docs")
    schema = pa.schema([*source.schema, pa.field("vector", pa.list_(pa.float32(), fn.ndims()))])
    config = EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=fn)
    reference = lancedb.connect(tmp_path).create_table("docs", schema=schema, embedding_functions=[config])
    reference.add(source)
    assert written.schema.equals(reference.schema, check_metadata=True)
    assert written.count_rows() == ROWS
    np.testing.assert_allclose(vectors_by_id(written.to_arrow()), vectors_by_id(reference.to_arrow()),
                               atol=1e-5)
    assert written.to_arrow().sort_by("id").select(["id", "topic", "text"]).equals(source)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_written_table_searches_by_text_in_a_fresh_process(ingested):
    code = (
        "import json, sys, lancedb, lancedb_baai\n"
        "table = lancedb.connect(sys.argv[1]).open_table('docs')\n"
        "hits = table.search('how to sort a list').limit(5).to_arrow()\n"
        "print(json.dumps({'ids': hits['id'].to_pylist(), 'loads': lancedb_baai.load_count(),\n"
        "                  'model': table.embedding_functions['vector'].function.name}))\n"
    )
    child = json.loads(run_python(code, str(ingested["uri"])).strip().splitlines()[-1])
    fn = ingested["fn"]
    stored = lancedb.connect(ingested["uri"]).open_table("docs").to_arrow().sort_by("id")
    query = np.asarray(fn.compute_query_embeddings("how to sort a list")[0])
    distances = ((vectors_by_id(stored) - query) ** 2).sum(axis=1)
    assert child["ids"] == np.argsort(distances)[:5].tolist()
    assert child["loads"] == 1
    assert child["model"] == fn.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rerun_overwrites_with_the_same_rows(ingested, source, st_model):
    uri, fn = ingested["uri"], ingested["fn"]
    before = lancedb.connect(uri).open_table("docs").to_arrow()
    with pytest.raises(ValueError, match="already exists.*mode='overwrite'"):
        embed_to_lance(source[0], uri, "docs", fn)
    report = embed_to_lance(source[0], uri, "docs", fn.model_dump(), mode="overwrite", concurrency=1,
                            batch_size=BATCH)
    after = lancedb.connect(uri).open_table("docs")
    assert report.rows == after.count_rows() == ROWS
    assert sorted(after.to_arrow()["id"].to_pylist()) == list(range(ROWS))
    np.testing.assert_allclose(vectors_by_id(after.to_arrow()), vectors_by_id(before), atol=1e-5)
    assert os.listdir(uri) == ["docs.lance"]  # no staging left behind


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_row_fails_clearly_and_leaves_the_target_alone(ray_session, st_model, tmp_path):
    rows = corpus(40).to_pylist()
    rows[21]["text"] = None
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    db = lancedb.connect(tmp_path / "db")
    db.create_table("docs", data=pa.table({"text": ["kept"]}))
    version = db.open_table("docs").version
    with pytest.raises(BadRowError) as error:
        embed_to_lance(source, tmp_path / "db", "docs", make(st_model), mode="overwrite",
                       concurrency=1, batch_size=BATCH)
    message = str(error.value)
    assert "column 'text' is null at row" in message and "id=21" in message
    assert message.endswith("Nothing was written to table 'docs'.")
    table = lancedb.connect(tmp_path / "db").open_table("docs")
    assert table.version == version and table.to_arrow()["text"].to_pylist() == ["kept"]
    assert os.listdir(tmp_path / "db") == ["docs.lance"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_non_string_source_column_fails_before_any_actor_starts(ray_session, st_model, tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "text": [10, 20]}), tmp_path / "ints.parquet")
    with pytest.raises(BadRowError, match="column 'text' holds int64 values, not strings"):
        embed_to_lance(tmp_path / "ints.parquet", tmp_path / "db", "docs", make(st_model))
    assert not (tmp_path / "db").exists() or os.listdir(tmp_path / "db") == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rerank_batches_on_an_actor_pool(ray_session, cross_encoder):
    fn = make(cross_encoder, "local-baai-rerank")
    passages = corpus(24)["text"].to_pylist()
    queries = ["sort a list", "open a file"] * 12
    dataset = ray_session.data.from_arrow(pa.table({"query": queries, "passage": passages}))
    out = dataset.map_batches(BAAIRerankBatches, fn_constructor_kwargs={"function": fn, "debug": True},
                              batch_size=8, batch_format="pyarrow", concurrency=1,
                              **actor_options(fn, concurrency=1)).take_all()
    assert {row["baai_pid"] for row in out} != {os.getpid()}
    assert {row["baai_load_count"] for row in out} == {1}
    by_pair = {(row["query"], row["passage"]): row["score"] for row in out}
    for query in ("sort a list", "open a file"):
        mine = [p for q, p in zip(queries, passages) if q == query]
        np.testing.assert_allclose([by_pair[(query, p)] for p in mine], fn.score(query, mine), atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_benchmark_quick_run(ray_session, tmp_path):
    out = tmp_path / "ray_ingest.json"
    address = ray_session.get_runtime_context().gcs_address  # join this session's Ray: no second start-up
    done = subprocess.run([sys.executable, "benchmarks/ray_ingest.py", "--quick", "--out", str(out),
                           "--address", address], capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"cpu_model", "cpu_cores", "torch", "ray", "pylance"} <= set(result["machine"])
    assert result["machine"]["dtypes_used"]["local-baai"] in ("float32", "bfloat16")
    for run in result["ray"]:
        assert run["loads"] == run["actors"]
        assert run["loads_per_actor"] == [1] * run["actors"]
        assert run["rows_per_s"] > 0 and run["ratio_to_table_add"] > 0
    assert result["table_add"]["rows_per_s"] > 0
    assert "rows/s" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reembed_on_ray_actors_resumes_what_a_local_run_left(ray_session, st_model, sharp_st_model, tmp_path,
                                                              monkeypatch):
    from lancedb_baai.tables import switch as _switch

    fn, new = make(st_model), make(sharp_st_model)

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    texts = corpus(40)["text"].to_pylist()
    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": t} for t in texts])
    local = _switch.embed_chunk
    done = []

    def dies_after_two(*args):
        if len(done) == 2:
            raise KeyboardInterrupt  # what a killed run leaves: two chunks in the checkpoint
        done.append(local(*args))
        return done[-1]

    monkeypatch.setattr(sys.modules["lancedb_baai.tables.reembed"], "embed_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        lancedb_baai.reembed(table, new, batch_size=8, checkpoint=tmp_path / "ck")
    monkeypatch.undo()
    result = lancedb_baai.reembed(table, new, batch_size=8, checkpoint=tmp_path / "ck", ray_actors=1)
    assert result["status"] == "switched" and result["embedded"] == len(texts) - 2 * 8  # the actor did the rest
    rows = lancedb.connect(tmp_path / "db").open_table("docs").to_arrow()
    vectors = np.array(rows["vector"].to_pylist(), dtype=np.float32)
    assert np.abs(vectors - np.array(new.generate_embeddings(rows["text"].to_pylist()))).max() <= 1e-5
