"""Known BAAI bge models as plain data: what each is, without loading any weights."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

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
