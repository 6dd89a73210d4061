"""examples/server.py: create_app inside a user's own ASGI module, served in-process."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import lancedb_baai

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def test_example_app_serves_the_preloaded_models(st_model, cross_encoder, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("LANCEDB_BAAI_EMBED", str(st_model))
    monkeypatch.setenv("LANCEDB_BAAI_RERANK", str(cross_encoder))
    monkeypatch.delenv("LANCEDB_BAAI_ADMIN_TOKEN", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    sys.modules.pop("server", None)
    app = importlib.import_module("server").app
    loads = lancedb_baai.load_count()
    assert len(lancedb_baai.cache_info()) == 2  # loaded by create_app, before any request
    with TestClient(app) as client:
        vectors = client.post("/v1/embeddings", json={"input": ["python", "a list"]}).json()["data"]
        assert len(vectors) == 2 and len(vectors[0]["embedding"]) == 32
        ranked = client.post("/rerank", json={"query": "python", "texts": ["a", "b", "c"]}).json()
        assert sorted(r["index"] for r in ranked) == [0, 1, 2]
        assert client.post("/rerank", json={"query": " ", "texts": ["a"]}).status_code == 422
        assert client.get("/admin/engines").status_code == 403  # no token configured: admin is off
    assert lancedb_baai.load_count() == loads
