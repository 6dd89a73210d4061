"""Where a model's files are: a local directory as is, or a hub snapshot under a file lock."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class ModelNotAvailableError(OSError):
    """A hub model is neither in the local cache nor downloadable from here."""


class BrokenModelError(ValueError):
    """A model directory whose files cannot be read as a model: truncated, corrupt or unreadable."""


class WrongModelError(ValueError):
    """A readable model of the wrong kind or shape for what it was asked to do."""


def read_json(file: Path, expect: type = dict) -> Any:
    """A model's JSON config file, or an error naming the file and how to repair it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrokenModelError(
            f"cannot read {str(file)!r} ({type(exc).__name__}: {exc}). The model's files are "
            "damaged or unreadable: copy or download the model again (`lancedb-baai download NAME`)"
        ) from exc
    if not isinstance(data, expect):
        raise BrokenModelError(f"{str(file)!r} holds a JSON {type(data).__name__}, not a {expect.__name__}: "
                               "copy or download the model again.")
    return data


def architectures(path: Path, suffix: str) -> list[str]:
    """The model classes in ``path``'s config.json whose names end with ``suffix``."""
    return [a for a in read_json(path / "config.json").get("architectures") or [] if a.endswith(suffix)]


_JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_files(path: Path) -> None:
    """Refuse a model directory whose JSON files or ``*.safetensors`` headers are damaged (no weights read).

    A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte
    range, then the data: a file shorter than the ranges it declares was cut off.
    """
    for name in _JSON_FILES:
        if (path / name).is_file():
            read_json(path / name)
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        with file.open("rb") as stream:
            head = stream.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = stream.read(length) if 0 < length <= size - 8 else b""
        try:
            tensors = json.loads(header)
            need = 8 + length + max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"),
                                    default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            need = None
        if need is None or size < need:
            what = "has no readable header" if need is None else f"is {size} bytes but its header declares {need}"
            raise BrokenModelError(
                f"weights file {str(file)!r} {what}: it is truncated or corrupt. Copy or download "
                "the model again (`lancedb-baai download NAME`); nothing was written"
            )


@contextmanager
def explain_broken(path: Path) -> Iterator[None]:
    """Turn a low-level failure while loading ``path`` into an error naming the files to check."""
    try:
        yield
    except (BrokenModelError, WrongModelError, PermissionError, FileNotFoundError, ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, tokenizers and torch each raise their own types
        weights = sorted(p.name for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
        raise BrokenModelError(
            f"cannot load the model in {str(path)!r}: {type(exc).__name__}: {exc}. Its files "
            f"(weights: {', '.join(weights) or 'none found'}; config.json; tokenizer files) look "
            "truncated, corrupt or mismatched: copy or download the model again."
        ) from exc


def is_local(name: str) -> bool:
    """True for names that mean a directory on disk rather than a hub id."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return True
    return name.startswith((".", "/", "~", "\\")) or os.path.isabs(name) or not _HUB_ID.fullmatch(name)


def model_id(name: str) -> str:
    """The identity of a model in the engine cache: a resolved local path, or the hub id."""
    if is_local(name):
        return os.path.realpath(os.path.expanduser(name))
    return name


def local_dir(name: str) -> Path:
    """The existing local model directory ``name`` points to, or an error saying what to pass."""
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {str(path)!r} does not exist. Pass name= a directory that "
            "holds the model's config.json, or a hub id such as 'BAAI/bge-small-en-v1.5'."
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no config.json, so it is not a transformers model directory. "
            "Pass the directory that holds config.json and the weights."
        )
    return path


def resolve(name: str, revision: str | None = None) -> Path:
    """The directory holding ``name``'s files, downloading a hub model once if needed.

    Local directories are used as they are: nothing is written into them, and they may
    be read-only. Hub ids are read from the local hub cache; when missing, one process
    downloads under an inter-process lock while the others wait and then read.
    """
    if is_local(name):
        return local_dir(name)
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    with model_lock(name, revision):
        cached = _cached_snapshot(name, revision)
        if cached is not None:
            return cached
        return _download(name, revision)


@functools.lru_cache(maxsize=None)
def model_lock(name: str, revision: str | None = None) -> Any:
    """The inter-process lock of one model: its download, and the export of it (see :mod:`._export`).

    One lock object per model in a process, so a thread holding it may take it again.
    """
    from filelock import FileLock

    return FileLock(str(_lock_path(name, revision)))


def hub_cache_dir() -> Path:
    """The hub cache that huggingface_hub reads and writes (honours HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _lock_path(name: str, revision: str | None) -> Path:
    digest = hashlib.sha1(f"{name}@{revision or 'main'}".encode()).hexdigest()[:16]
    directory = hub_cache_dir() / ".locks" / "lancedb_baai"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{digest}.lock"


def _cached_snapshot(name: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # any "not in the cache" flavour huggingface_hub raises
        return None


def _download(name: str, revision: str | None) -> Path:
    """Fetch a hub snapshot; the one place this package touches the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision))
    except Exception as exc:
        raise ModelNotAvailableError(
            f"model {name!r} is not available locally and could not be downloaded ({exc}). "
            f"On a machine with network run `lancedb-baai download {name}` (or "
            "`huggingface-cli download`) and copy the hub cache, or pass name= the path of "
            "a local directory that holds the model."
        ) from exc


_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                  "pooling_mode_lasttoken")


def embedding_dims(path: Path) -> int:
    """The output width of the embedder in ``path``, read from its config files (no weights).

    A sentence-transformers layout is read as written: the last Dense module's width, else
    the pooling width; a plain export gives its hidden size (CLS pooling).
    """
    read = read_json
    dims = read(path / "config.json").get("hidden_size")
    modules_file = path / "modules.json"
    for module in read(modules_file, list) if modules_file.is_file() else []:
        config_file = path / module.get("path", "") / "config.json"
        if module["type"].endswith("Pooling") and config_file.is_file():
            pooling = read(config_file)
            modes = sum(bool(pooling.get(m)) for m in _POOLING_MODES) or 1
            dims = pooling.get("word_embedding_dimension", dims) * modes
        elif module["type"].endswith("Dense") and config_file.is_file():
            dims = read(config_file).get("out_features", dims)
    if not dims:
        raise ValueError(f"cannot tell the embedding width of {str(path)!r}: its config.json has no hidden_size")
    return int(dims)


def cached_dir(name: str, revision: str | None) -> Path | None:
    """The local directory for ``name`` if its files are here already, without downloading."""
    if is_local(name):
        return local_dir(name)
    return _cached_snapshot(name, revision)
