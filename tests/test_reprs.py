"""How the package's objects print: cache_info() as a table, function objects with their configuration."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

import lancedb_baai
from lancedb_baai import BAAIEmbeddings, BAAIReranker, BAAIRerankFunction
from lancedb_baai.engines.report import CacheInfo, html_table, text_table


@pytest.fixture
def two_engines(st_model, cross_encoder):
    BAAIEmbeddings(name=str(st_model), device="cpu", dtype="float32").generate_embeddings(["a", "b"])
    BAAIRerankFunction(name=str(cross_encoder), device="cpu", dtype="float32").score("q", ["p"])
    return lancedb_baai.cache_info()


def test_cache_info_is_still_a_list_of_records(two_engines, st_model):
    info = two_engines
    assert isinstance(info, CacheInfo) and isinstance(info, list)
    assert len(info) == 2
    assert info[0]["model"] == str(st_model) and info[0]["kind"] == "embed"
    assert info[1]["kind"] == "rerank" and info[1]["loads"] == 1
    assert info == [dict(record) for record in info]  # compares equal to plain records
    assert json.loads(json.dumps(info)) == list(info)
    restored = pickle.loads(pickle.dumps(info))
    assert type(restored) is CacheInfo and restored == info
    assert copy.deepcopy(info) == info


def test_cache_info_prints_as_an_aligned_table(two_engines, st_model, cross_encoder):
    text = str(two_engines)
    assert repr(two_engines) == text
    lines = text.splitlines()
    assert lines[0].endswith("2 engines") and f"process {two_engines[0]['pid']}" in lines[0]
    header, rule, *rows = lines[1:]
    assert header.split() == ["model", "kind", "backend", "device", "dtype", "max_length", "loads", "calls", "version",
                              "loaded", "fidelity", "weights_mapped", "weights_private"]
    assert set(rule) == {"-", " "}
    for row, record in zip(rows, two_engines):  # torch float32 reads safetensors weights through a map
        assert record["shared_weights"] is True and record["weights_mapped_bytes"] > 0
        assert row.split()[-4:] == [f"{record['weights_mapped_bytes'] / 2**20:.1f}", "MiB",
                                    f"{record['weights_private_bytes'] / 2**20:.1f}", "MiB"]
    assert rows[0].startswith(str(st_model)) and rows[1].startswith(str(cross_encoder))
    # every column starts at the same offset on every line
    for column in ("kind", "backend", "device", "dtype"):
        start = header.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), column
    # numbers are right-aligned under their header
    end = header.index("loads") + len("loads")
    assert all(row[end - 1] == "1" for row in rows)


def test_cache_info_renders_html_with_escaped_values():
    info = CacheInfo([{"model": "<script>alert(1)</script>", "served": "<script>alert(1)</script>", "kind": "embed",
                       "device": "cpu", "dtype": "float32", "max_length": None, "loads": 1, "calls": 2,
                       "version": 0, "loaded": True, "pid": 7}])
    html = info._repr_html_()
    assert html.startswith("<table>") and html.endswith("</table>")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<th>model</th>" in html and "<td>yes</td>" in html and "<td>-</td>" in html
    assert "engine cache of process 7: 1 engine</caption>" in html


def test_cache_info_html_lists_each_engine(two_engines, st_model, cross_encoder):
    html = two_engines._repr_html_()
    assert html.count("<tr>") == 3  # header + two engines
    assert f"<td>{st_model}</td>" in html and f"<td>{cross_encoder}</td>" in html


def test_empty_cache_info_says_so():
    info = lancedb_baai.cache_info()
    assert info == []
    assert "no engines loaded" in str(info)
    assert "no engines loaded" in info._repr_html_() and "<table" not in info._repr_html_()


def test_served_column_appears_only_after_a_swap():
    record = {"model": "m", "served": "m", "kind": "embed", "loads": 1}
    assert "served" not in str(CacheInfo([record]))
    swapped = CacheInfo([{**record, "served": "other-model"}])
    assert str(swapped).splitlines()[1].split()[:2] == ["model", "served"]
    assert "<td>other-model</td>" in swapped._repr_html_()


def test_table_helpers_align_and_escape():
    rows = [{"name": "a", "n": 5}, {"name": "longer", "n": 12345}]
    assert text_table(rows, ["name", "n"]).splitlines() == [
        "name        n",
        "------  -----",
        "a           5",
        "longer  12345",
    ]
    assert "<td>&amp;</td>" in html_table([{"x": "&"}], ["x"])


def test_text_table_headers_and_number_formats():
    rows = [{"method": "ours", "rate": 143.2149, "ok": True}, {"method": "theirs", "rate": 50.0, "ok": None}]
    assert text_table(rows, ["method", "rate", "ok"], headers=["method", "texts/s", "met"],
                      formats={"rate": ".1f"}).splitlines() == [
        "method  texts/s  met",
        "------  -------  ---",
        "ours      143.2  yes",
        "theirs     50.0  -",
    ]


def test_function_reprs_show_their_configuration(st_model, cross_encoder):
    embedder = BAAIEmbeddings(name=str(st_model), device="cpu", batch_size=8)
    text = repr(embedder)
    assert text.startswith("BAAIEmbeddings(")
    for part in (f"name='{st_model}'", "device='cpu'", "batch_size=8", "normalize=True"):
        assert part in text
    rerank = BAAIRerankFunction(name=str(cross_encoder), normalize=True)
    assert repr(rerank).startswith("BAAIRerankFunction(") and "normalize=True" in repr(rerank)
    # LanceDB's retry setting is not used by local inference, so it is not shown as if it were
    assert "max_retries" not in text and "max_retries" not in repr(rerank)


def test_reranker_repr_shows_model_and_options(cross_encoder):
    reranker = BAAIReranker(str(cross_encoder), column="body", return_score="all", dtype="float32")
    text = repr(reranker)
    assert text.startswith("BAAIReranker(")
    for part in (f"name='{cross_encoder}'", "dtype='float32'", "column='body'", "return_score='all'"):
        assert part in text
    assert str(reranker) == text


def test_default_reranker_repr_names_its_model():
    text = repr(BAAIReranker())
    assert "BAAI/bge-reranker-base" in text and "(," not in text
