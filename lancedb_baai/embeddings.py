"""`local-baai`: a LanceDB text embedding function for local bge models."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register

from . import _catalog, _hub, _progress
from ._config import EngineConfig


def check_texts(texts: Sequence[Any], what: str = "text",
                advice: str = "bge models embed strings only: fill or drop such rows (nothing was written).",
                allow_null: bool = False) -> list[str]:
    """The texts as a list, or an error naming the first row that is not a string (nor null, if allowed)."""
    texts = list(texts)
    for row, value in enumerate(texts):
        if not isinstance(value, str) and not (allow_null and value is None):
            problem = "is null" if value is None else f"is a {type(value).__name__}, not a string"
            raise ValueError(f"{what} at row {row} {problem}. {advice}")
    return texts


class NoRetry:
    """Local inference does not get better by retrying: fail at once with the real error."""

    def compute_query_embeddings_with_retry(self, *args, **kwargs):
        return self.compute_query_embeddings(*args, **kwargs)

    def compute_source_embeddings_with_retry(self, *args, **kwargs):
        return self.compute_source_embeddings(*args, **kwargs)

    def __repr_args__(self):
        """The configuration without ``max_retries``, which these functions never use."""
        return [(name, value) for name, value in super().__repr_args__() if name != "max_retries"]

    def safe_model_dump(self) -> dict[str, Any]:
        """The arguments stored in table metadata: as given to ``create()``, else the non-defaults."""
        original = getattr(self, "_original_args", None)
        if original is None:
            return self.model_dump(exclude_defaults=True)
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in original.items()}


@register("local-baai")
class BAAIEmbeddings(NoRetry, EngineConfig, TextEmbeddingFunction):
    """Embeddings from a local bge model, loaded once per process and shared.

    Parameters
    ----------
    name : str, default "BAAI/bge-small-en-v1.5"
        Hub id or local model directory (sentence-transformers layout or a plain export).
    device : str, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".
    dtype : str, default "auto"
        "auto" (the fastest faithful dtype for the device), "float32", "float16" or "bfloat16".
    normalize : bool, default True
        L2-normalise vectors (what bge is trained for: cosine = dot product).
    query_instruction : str or None, default None
        Prefix for queries only. None picks bge's own by model family; "" means none.
    batch_size : int, default 32
        Most texts per forward pass (batches are also bounded by a token budget).
    max_length : int or None, default None
        Token limit; None is the model's own (512 for bge v1.5, 8192 for bge-m3).
    show_progress : bool or None, default None
        Progress bar; None shows one for large inputs in interactive sessions only.

    Examples
    --------
    >>> import lancedb_baai
    >>> from lancedb.embeddings import get_registry
    >>> bge = get_registry().get("local-baai").create(name="BAAI/bge-small-en-v1.5")  # doctest: +SKIP
    """

    name: str = "BAAI/bge-small-en-v1.5"
    normalize: bool = True
    query_instruction: str | None = None

    def ndims(self) -> int:
        """Vector width, from the catalog or the model's config files: no weights are loaded."""
        return _dims(self.name, self.revision)

    def _engine_kind(self) -> str:
        """bge-m3 runs on the "m3" engine, which every function on that model shares."""
        from .m3 import is_m3

        return "m3" if is_m3(self.name, self.revision) else self.engine_kind

    def instruction(self) -> str:
        """The prefix queries get: the explicit one, else bge's own for this model family."""
        if self.query_instruction is not None:
            return self.query_instruction
        return _catalog.default_query_instruction(self.name)

    def compute_query_embeddings(self, query: str, *args, **kwargs) -> list[np.ndarray]:
        """Embed a search query, with bge's query instruction prepended."""
        queries = self.sanitize_input(query)
        for text in check_texts(queries, "query"):
            if not text.strip():
                raise ValueError("query is empty: pass the text to search for")
        return self._embed([self.instruction() + q for q in queries])

    def generate_embeddings(self, texts: Sequence[str], *args, **kwargs) -> list[np.ndarray]:
        """Embed passages as stored in the table: no instruction."""
        return self._embed(check_texts(texts))

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        progress = _progress.wanted(self.show_progress, len(texts))
        vectors = self.engine().encode(texts, normalize=self.normalize, batch_size=self.batch_size,
                                       progress=progress)
        return list(vectors)


@functools.lru_cache(maxsize=256)
def _dims(name: str, revision: str | None) -> int:
    spec = None if _hub.is_local(name) else _catalog.lookup(name)
    if spec is not None and spec.dims is not None:
        return spec.dims
    path = _hub.cached_dir(name, revision)
    if path is None:
        raise ValueError(
            f"cannot tell the vector width of {name!r}: it is not in the catalog of known bge "
            "models and its files are not available locally. Download it first or pass a local directory."
        )
    return _hub.embedding_dims(path)
