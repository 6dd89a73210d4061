"""What a stored configuration may make this process do: allow-lists for remote code and servers."""

from __future__ import annotations

import pytest

import lancedb_baai
from lancedb_baai import BAAIEmbeddings
from lancedb_baai.models import hub as _hub, trust as _trust


@pytest.fixture(autouse=True)
def _empty_lists(monkeypatch):
    for variable in (_trust.ALLOW_REMOTE_CODE_ENV, _trust.ALLOW_URLS_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(_trust, "_remote_code", set())
    monkeypatch.setattr(_trust, "_urls", set())


def test_allow_remote_code_names_the_models_it_allows(tmp_path, monkeypatch):
    model = str(tmp_path / "m")
    assert not _trust.remote_code_allowed(_hub.model_id(model))
    lancedb_baai.allow_remote_code(model)
    assert _trust.remote_code_allowed(_hub.model_id(model))
    assert not _trust.remote_code_allowed(_hub.model_id(str(tmp_path / "other")))
    monkeypatch.setenv(_trust.ALLOW_REMOTE_CODE_ENV, "*")
    assert _trust.remote_code_allowed("anything/else")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1/v1", "http://[::1]:9"])
def test_servers_on_this_machine_are_allowed(url):
    assert _trust.url_allowed(url)


def test_a_server_elsewhere_needs_this_process_to_allow_it(monkeypatch):
    url = "http://embed.example.internal:8000/v1"
    assert not _trust.url_allowed(url)
    with pytest.raises(PermissionError, match=r"allow_url\('http://embed.example.internal:8000'\)") as info:
        BAAIEmbeddings(name="BAAI/bge-small-en-v1.5", url=url).generate_embeddings(["a text"])
    assert _trust.ALLOW_URLS_ENV in str(info.value)
    lancedb_baai.allow_url("http://embed.example.internal:8000")
    assert _trust.url_allowed(url) and not _trust.url_allowed("http://embed.example.internal:8001")
    monkeypatch.setattr(_trust, "_urls", set())
    monkeypatch.setenv(_trust.ALLOW_URLS_ENV, "http://other:1, http://embed.example.internal:8000")
    assert _trust.url_allowed(url)
