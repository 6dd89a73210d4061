"""Loaded models and their batched inference: the only place torch runs.

An engine owns one model and its tokenizer on one device in one dtype. It is built by
:mod:`._loading` for the engine cache (never by users directly) and shared by every
function object, reranker and pickled copy whose configuration maps to the same cache key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import progress as _progress
from .batching import pass_cost, plan_batches

if TYPE_CHECKING:
    from .cache import EngineKey


class _TorchEngine:
    """What every engine shares: the tokenizer, length-sorted batches and counters."""

    kind = ""

    def __init__(self, key: EngineKey, model: Any, tokenizer: Any, max_length: int) -> None:
        self.key = key
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.forward_passes = 0
        self.weights: dict[str, Any] = {"model": key.model}  # the fingerprint of the files it was loaded from
        self.drift_checked: set[str] = set()  # stored fingerprints already compared with this engine
        # Fast tokenizers are not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()

    def reset_after_fork(self) -> None:
        """Make the engine usable in a forked child: a fresh lock, fresh counters."""
        self._tokenizer_lock = threading.Lock()
        self.forward_passes = 0

    def _tokenize(self, *texts: Sequence[str]) -> dict[str, list]:
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                *texts, truncation=self._truncation, max_length=self.max_length, padding=False
            )
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    _truncation: str | bool = True

    def token_counts(self, texts: Sequence[str], pair_with: Sequence[str] | None = None) -> list[int]:
        """Tokens per input before truncation (special tokens included; pairs: ``pair_with[i]``, text i).

        What a server needs to fill a token budget and to refuse inputs over ``max_length``.
        """
        if not texts:
            return []
        args = (list(pair_with), list(texts)) if pair_with is not None else (list(texts),)
        with self._tokenizer_lock:
            encoded = self.tokenizer(*args, truncation=False, padding=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _batches(self, features: dict[str, list], batch_size: int, progress: bool, desc: str):
        """Yield (indices, padded tensors on device) in length order; indices restore order."""
        lengths = [len(ids) for ids in features["input_ids"]]
        with _progress.bar(progress, len(lengths), desc) as bar:
            for index in plan_batches(lengths, batch_size, pass_tokens=pass_cost(self.key.device)):
                chunk = {k: [v[i] for i in index] for k, v in features.items()}
                with self._tokenizer_lock:
                    padded = self.tokenizer.pad(chunk, return_tensors="pt")
                self.forward_passes += 1
                yield index, {k: t.to(self.key.device) for k, t in padded.items()}
                if bar is not None:
                    bar.update(len(index))


class BAAIEmbeddingEngine(_TorchEngine):
    """A bge embedder: texts in, float32 vectors out, in the order given."""

    kind = "embed"

    def __init__(self, key: EngineKey, model: Any, tokenizer: Any, max_length: int,
                 dims: int, pool: Callable[[dict], Any]) -> None:
        super().__init__(key, model, tokenizer, max_length)
        self.dims = dims
        self._pool = pool

    def encode(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (already prefixed with any instruction) as an (n, dims) float32 array."""
        import torch

        out = np.empty((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        features = self._tokenize(list(texts))
        with torch.inference_mode():
            for index, batch in self._batches(features, batch_size, progress, "embedding"):
                vectors = self._pool(batch).float()
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
                out[index] = vectors.cpu().numpy()
        return out


class BAAIRerankEngine(_TorchEngine):
    """A bge cross-encoder: FlagReranker's scores (raw single-label logits) for query/passage pairs."""

    kind = "rerank"
    _truncation = "only_second"

    def score(self, query: str, passages: Sequence[str], *, normalize: bool = False,
              batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Score each passage against ``query``; the passage is truncated, never the query."""
        import torch

        out = np.empty(len(passages), dtype=np.float32)
        if not passages:
            return out
        query = self._cap_query(query)
        features = self._tokenize([query] * len(passages), list(passages))
        with torch.inference_mode():
            for index, batch in self._batches(features, batch_size, progress, "reranking"):
                logits = self.model(**batch).logits.view(-1).float()
                out[index] = (torch.sigmoid(logits) if normalize else logits).cpu().numpy()
        return out

    def _cap_query(self, query: str) -> str:
        with self._tokenizer_lock:
            enc = self.tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)
        return cap_query(query, enc["offset_mapping"], self.max_length)


def cap_query(query: str, offsets: Sequence[tuple[int, int]], max_length: int) -> str:
    """Cut a very long query to 3/4 of ``max_length`` tokens (``offsets``: its tokens' spans), as FlagReranker does.

    Shared by the torch and the exported rerank engines, whose tokenizers differ in how
    they report the spans.
    """
    cap = max_length * 3 // 4
    if len(offsets) <= cap:
        return query
    return query[: offsets[cap - 1][1]]


def native_max_length(config: Any, tokenizer: Any) -> int:
    """The longest input the model was built for: the tokenizer's limit within the positions."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta"):
        positions -= 2  # RoBERTa-style models offset positions by the padding index
    declared = getattr(tokenizer, "model_max_length", None)
    if declared is None or declared > 1_000_000:
        return positions
    return min(declared, positions)
