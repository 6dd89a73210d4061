"""`local-baai`: a LanceDB text embedding function for local bge models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register

from ..models import catalog as _catalog
from ..engines import progress as _progress
from ..engines import kinds
from .config import EmbedderConfig
from .inputs import NoRetry, check_queries, check_texts


@register("local-baai")
@kinds.function_of("embed")
class BAAIEmbeddings(NoRetry, EmbedderConfig, TextEmbeddingFunction):
    """Embeddings from a local bge model, loaded once per process and shared.

    Parameters
    ----------
    name : str, default "BAAI/bge-small-en-v1.5"
        Hub id or local model directory (sentence-transformers layout or a plain export).
    device : str, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".
    dtype : str, default "auto"
        "auto" (the fastest faithful dtype for the device), "float32", "float16" or "bfloat16".
    backend : {"auto", "torch", "onnx", "openvino"}, default "auto"
        The runtime: "auto" takes the fastest installed one that passes the fidelity gate
        on this host (see the docs, "CPU backends"); ONNX Runtime and OpenVINO run an
        export of the model, made once per machine, without torch.
    precision : {None, "fp32", "bf16", "int8"}, default None
        The precision on ONNX Runtime / OpenVINO (None: bf16 where native, else fp32);
        on torch, "fp32"/"bf16" mean dtype "float32"/"bfloat16".
    min_fidelity : float or None, default None
        The gate's threshold for an ONNX Runtime / OpenVINO engine against torch float32
        (None: 0.999 fp32, 0.99 bf16, 0.97 int8); 0 accepts any, with its figures shown.
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
    url : str or None, default None
        Embed through a ``lancedb-baai serve`` server at this address instead of loading the
        model here; ``name`` must be a model id that server serves.
    api_key : str or None, default None
        The key of a server started with ``--api-key``. LanceDB's ``create()`` takes it only as
        ``"$var:NAME"`` (set with ``registry.set_var(NAME, key)``), and only that reference is
        stored in the table's metadata.
    on_drift : {"error", "warn"}, default "error"
        What a table's function does when the model serving it is not the one that made
        the table's vectors (see the docs, "Changing models safely").

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
        if self.url:
            return self.engine().dims
        return _catalog.vector_dims(self.name, self.revision)

    def _engine_kind(self) -> str:
        """bge-m3 runs on the "m3" engine, which every function on that model shares.

        On ONNX Runtime or OpenVINO, bge-m3's dense vector (CLS, normalized) is exported as
        any bge embedder is; its sparse and ColBERT outputs stay on torch.
        """
        if self.backend not in ("auto", "torch") or not _catalog.is_m3(self.name, self.revision):
            return self.engine_kind
        return "m3"

    def semantics(self) -> dict:
        pooling_is_m3 = {"pooling": "cls"} if _catalog.is_m3(self.name, self.revision) else {}
        return {**pooling_is_m3, "output": "dense", "normalize": self.normalize,
                "query_instruction": self.instruction()}

    def instruction(self) -> str:
        """The prefix queries get: the explicit one, else bge's own for this model family."""
        if self.query_instruction is not None:
            return self.query_instruction
        return _catalog.default_query_instruction(self.name)

    def compute_query_embeddings(self, query: str, *args, **kwargs) -> list[np.ndarray]:
        """Embed a search query, with bge's query instruction prepended."""
        queries = check_queries(query)
        return self._embed([self.instruction() + q for q in queries])

    def generate_embeddings(self, texts: Sequence[str], *args, **kwargs) -> list[np.ndarray]:
        """Embed passages as stored in the table: no instruction."""
        return self._embed(check_texts(texts))

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        progress = _progress.wanted(self.show_progress, len(texts))
        vectors = self.engine().encode(texts, normalize=self.normalize, batch_size=self.batch_size,
                                       progress=progress)
        return list(vectors)
