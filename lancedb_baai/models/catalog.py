"""Known BAAI bge models as plain data, and the family facts read without loading weights.

What kind a model is (embedder, reranker, bge-m3), how wide its vectors are and which
query instruction its family uses: answered from the catalog for hub ids and from the
config files for local directories, never from the weights.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from . import hub as _hub

EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："

Kind = Literal["embed", "rerank", "m3"]


@dataclass(frozen=True)
class ModelSpec:
    """What the package knows about a published bge model."""

    name: str
    kind: Kind
    dims: int | None
    max_length: int
    query_instruction: str = ""


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("BAAI/bge-small-en-v1.5", "embed", 384, 512, EN_INSTRUCTION),
        ModelSpec("BAAI/bge-base-en-v1.5", "embed", 768, 512, EN_INSTRUCTION),
        ModelSpec("BAAI/bge-large-en-v1.5", "embed", 1024, 512, EN_INSTRUCTION),
        ModelSpec("BAAI/bge-small-zh-v1.5", "embed", 512, 512, ZH_INSTRUCTION),
        ModelSpec("BAAI/bge-base-zh-v1.5", "embed", 768, 512, ZH_INSTRUCTION),
        ModelSpec("BAAI/bge-large-zh-v1.5", "embed", 1024, 512, ZH_INSTRUCTION),
        ModelSpec("BAAI/bge-m3", "m3", 1024, 8192),
        ModelSpec("BAAI/bge-reranker-base", "rerank", None, 512),
        ModelSpec("BAAI/bge-reranker-large", "rerank", None, 512),
        ModelSpec("BAAI/bge-reranker-v2-m3", "rerank", None, 512),
    )
}

_FAMILY_INSTRUCTIONS = (
    (re.compile(r"bge-(small|base|large)-en(-v1\.5)?$"), EN_INSTRUCTION),
    (re.compile(r"bge-(small|base|large)-zh(-v1\.5)?$"), ZH_INSTRUCTION),
)


def model_basename(name: str) -> str:
    """The last component of a hub id or a local path, lower-cased: where the family shows."""
    return PurePath(str(name).rstrip("/\\")).name.lower()


def lookup(name: str) -> ModelSpec | None:
    """The catalog entry for a hub id, or None for anything the catalog does not list."""
    return CATALOG.get(name)


def default_query_instruction(name: str) -> str:
    """The instruction bge prepends to queries (never to passages) for this model's family.

    The family is read from the hub id or the local directory's name, so a local copy at
    ``./models/BAAI/bge-base-zh-v1.5`` gets the Chinese instruction like the hub id does.
    bge-m3 and unknown models get none.
    """
    base = model_basename(name)
    for pattern, instruction in _FAMILY_INSTRUCTIONS:
        if pattern.search(base):
            return instruction
    return ""


HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
"""The files a bge-m3 snapshot keeps beside its encoder: the ColBERT and sparse heads."""


def has_m3_heads(path: Path) -> bool:
    """True when ``path`` holds both bge-m3 head files next to the encoder."""
    return all((path / name).is_file() for name in HEAD_FILES)


def is_m3(name: str, revision: str | None = None) -> bool:
    """True for bge-m3: the hub id in the catalog, or a directory that holds both m3 head files."""
    if _hub.is_local(name):
        return has_m3_heads(Path(os.path.expanduser(name)))
    return _hub_is_m3(name, revision)


@functools.lru_cache(maxsize=256)
def _hub_is_m3(name: str, revision: str | None) -> bool:
    spec = lookup(name)
    if spec is not None:
        return spec.kind == "m3"
    path = _hub.cached_dir(name, revision)
    return path is not None and has_m3_heads(path)


def model_kind(name: str, revision: str | None = None) -> Kind | None:
    """What ``name`` is, from the catalog or its config files (no weights); None if neither is here.

    A classifier head (``*ForSequenceClassification`` in config.json) is a cross-encoder
    reranker, the two bge-m3 head files make bge-m3, anything else is an embedder. A local
    directory is always read; a missing one raises the error that says what to pass.
    """
    spec = None if _hub.is_local(name) else lookup(name)
    if spec is not None:
        return spec.kind
    path = _hub.cached_dir(name, revision)
    if path is None:
        return None
    if _hub.architectures(path, "ForSequenceClassification"):
        return "rerank"
    return "m3" if has_m3_heads(path) else "embed"


@functools.lru_cache(maxsize=256)
def vector_dims(name: str, revision: str | None = None) -> int:
    """The dense vector width of ``name``: the catalog's for hub ids, else from its config files.

    A local directory is always read (tiny or fine-tuned copies named like bge may have
    other widths than the published model).
    """
    spec = None if _hub.is_local(name) else lookup(name)
    if spec is not None and spec.dims is not None:
        return spec.dims
    path = _hub.cached_dir(name, revision)
    if path is None:
        raise ValueError(
            f"cannot tell the vector width of {name!r}: it is not in the catalog of known bge "
            "models and its files are not available locally. Download it first "
            "(`lancedb-baai download NAME`) or pass a local directory."
        )
    return _hub.embedding_dims(path)
