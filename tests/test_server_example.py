"""The FastAPI serving example: preload, /embed, /rerank and the admin-only swap."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import lancedb_baai

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture
def client(st_model, cross_encoder, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("LANCEDB_BAAI_EMBED", str(st_model))
    monkeypatch.setenv("LANCEDB_BAAI_RERANK", str(cross_encoder))
    monkeypatch.setenv("LANCEDB_BAAI_ADMIN_TOKEN", "secret")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    sys.modules.pop("server", None)
    return TestClient(importlib.import_module("server").app)


def test_server_preloads_and_serves(client, zh_model):
    base = lancedb_baai.load_count()
    assert len(lancedb_baai.cache_info()) == 2  # both models loaded at import, before any request
    vectors = client.post("/embed", json={"texts": ["python", "a list"]}).json()["vectors"]
    assert len(vectors) == 2 and len(vectors[0]) == 32
    scores = client.post("/rerank", json={"query": "python", "passages": ["a", "b", "c"]}).json()["scores"]
    assert len(scores) == 3
    assert client.post("/rerank", json={"query": " ", "passages": ["a"]}).status_code == 422
    assert lancedb_baai.load_count() == base

    assert client.post("/admin/swap", json={"new_name": str(zh_model)}).status_code == 403
    bad = client.post("/admin/swap", json={"new_name": "/no/such/model"}, headers={"x-admin-token": "secret"})
    assert bad.status_code == 400 and "old model still serving" in bad.json()["detail"]
    ok = client.post("/admin/swap", json={"new_name": str(zh_model)}, headers={"x-admin-token": "secret"})
    assert ok.status_code == 200 and ok.json()["version"] == 1
    swapped = client.post("/embed", json={"texts": ["python", "a list"]}).json()["vectors"]
    assert swapped != vectors
