"""Where model files come from: local directories as they are, hub ids from the local cache."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from lancedb_baai.models import hub as _hub
from lancedb_baai.models.hub import ModelNotAvailableError


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An offline, empty hub cache: nothing can be found and nothing can be fetched."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_hub_cache(cache: Path, repo_id: str) -> Path:
    """Lay out a snapshot the way huggingface_hub stores it: refs/main -> snapshots/<commit>/.

    The repository folder appears in one rename, so a concurrent reader never sees half of it.
    """
    folder = "models--" + repo_id.replace("/", "--")
    commit = "0123456789abcdef0123456789abcdef01234567"
    staging = cache / ".staging" / folder
    (staging / "snapshots" / commit).mkdir(parents=True)
    (staging / "refs").mkdir()
    (staging / "refs" / "main").write_text(commit)
    (staging / "snapshots" / commit / "config.json").write_text(json.dumps({"hidden_size": 8}))
    staging.rename(cache / folder)
    return cache / folder / "snapshots" / commit


@pytest.mark.parametrize("name", ["BAAI/bge-small-en-v1.5", "bge-m3", "org/model.v2_x"])
def test_hub_ids_are_not_local(name):
    assert not _hub.is_local(name)
    assert _hub.model_id(name) == name


@pytest.mark.parametrize("name", ["./models/bge", "/abs/bge", "~/bge", "..\\bge", "C:\\models\\bge",
                                  "a/b/c", "my model"])
def test_paths_are_local(name):
    assert _hub.is_local(name)


def test_existing_directory_is_local_even_if_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "BAAI" / "bge-small-en-v1.5").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _hub.is_local("BAAI/bge-small-en-v1.5")
    assert _hub.model_id("BAAI/bge-small-en-v1.5") == os.path.realpath(tmp_path / "BAAI" / "bge-small-en-v1.5")


def test_model_id_is_one_identity_per_directory(st_model, tmp_path):
    link = tmp_path / "alias"
    link.symlink_to(st_model)
    ids = {_hub.model_id(str(st_model)), _hub.model_id(str(st_model) + "/"), _hub.model_id(str(link)),
           _hub.model_id(os.path.relpath(st_model))}
    assert ids == {os.path.realpath(st_model)}


def test_missing_local_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "bge-small-en-v1.5"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        _hub.resolve(str(missing))
    assert str(missing) in str(info.value)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json") as info:
        _hub.resolve(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_local_directory_is_used_as_is(st_model):
    assert _hub.resolve(str(st_model)) == Path(st_model)


def test_unknown_hub_id_offline_says_what_to_do(empty_hub_cache):
    with pytest.raises(ModelNotAvailableError) as info:
        _hub.resolve("BAAI/bge-not-a-real-model")
    message = str(info.value)
    assert "'BAAI/bge-not-a-real-model' is not available locally" in message
    assert "local directory" in message and "name=" in message
    assert isinstance(info.value, OSError)
    assert _hub.cached_dir("BAAI/bge-not-a-real-model", None) is None


def test_hub_id_in_local_cache_resolves_offline(empty_hub_cache):
    snapshot = put_in_hub_cache(empty_hub_cache, "BAAI/bge-cached")
    assert _hub.resolve("BAAI/bge-cached") == snapshot
    assert _hub.cached_dir("BAAI/bge-cached", None) == snapshot


def test_concurrent_resolves_download_once(empty_hub_cache, monkeypatch):
    """Callers waiting on the download lock read the snapshot the first one fetched."""
    calls = []

    def fake_download(name, revision):
        calls.append(name)
        return put_in_hub_cache(empty_hub_cache, name)

    monkeypatch.setattr(_hub, "_download", fake_download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_hub.resolve("BAAI/bge-new"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert calls == ["BAAI/bge-new"]
    assert len(results) == 4 and len(set(results)) == 1


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_embedding_dims_of_the_fixture_layouts(st_model, plain_model, minilm):
    assert _hub.embedding_dims(Path(st_model)) == 32
    assert _hub.embedding_dims(Path(plain_model)) == 32
    assert _hub.embedding_dims(Path(minilm)) == 384


def test_embedding_dims_reads_dense_and_pooling_modes(tmp_path):
    _write(tmp_path / "config.json", {"hidden_size": 64})
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    _write(tmp_path / "1_Pooling" / "config.json", {"word_embedding_dimension": 64,
                                                    "pooling_mode_cls_token": True,
                                                    "pooling_mode_mean_tokens": True})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert _hub.embedding_dims(tmp_path) == 128
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    _write(tmp_path / "2_Dense" / "config.json", {"in_features": 128, "out_features": 24})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert _hub.embedding_dims(tmp_path) == 24


def test_embedding_dims_without_width_is_an_error(tmp_path):
    _write(tmp_path / "config.json", {"model_type": "bert"})
    with pytest.raises(ValueError, match="hidden_size"):
        _hub.embedding_dims(tmp_path)
