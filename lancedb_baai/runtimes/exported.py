"""Engines that run an export on ONNX Runtime or OpenVINO: tokenizers and numpy, no torch, no transformers.

They answer the same calls as the torch engines (``encode``, ``score``, ``token_counts``)
with the same semantics: length-sorted batches from the same planner, bge pooling inside
the graph, normalisation after it, FlagReranker's raw logits with the passage truncated
and a long query capped at 3/4 of ``max_length``. Opening one reads the graph and the
tokenizer from the export directory and nothing else, so a fresh process serves its first
text in about the time it takes to import LanceDB.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engines import progress as _progress
from ..engines.batching import pass_cost, plan_batches
from .device import THREADS_ENV
from ..engines.torch_engines import cap_query

if TYPE_CHECKING:
    from ..engines.cache import EngineKey

_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}  # int8: the graph carries it


def default_threads() -> int:
    """Threads per inference: ``$LANCEDB_BAAI_THREADS``, else the CPUs this process may run on."""
    configured = os.environ.get(THREADS_ENV, "").strip()
    if configured:
        return max(1, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Runner:
    """One compiled graph: padded int64 inputs in, the output array out. Safe to call from threads."""

    def __init__(self, directory: Path, manifest: dict[str, Any], dtype: str, threads: int) -> None:
        self.directory, self.manifest, self.dtype, self.threads = directory, manifest, dtype, threads
        self._lock = threading.Lock()
        self._compiled = self._open()

    def _open(self) -> Any:
        raise NotImplementedError

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class _OnnxRunner(_Runner):
    def _open(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.directory / "model.onnx"), options,
                                    providers=["CPUExecutionProvider"])

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._compiled.run(None, feeds)[0]


class _OpenVINORunner(_Runner):
    def _open(self) -> Any:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.dtype], "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(self.threads)}
        return ov.Core().compile_model(str(self.directory / "model.xml"), "CPU", config)

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:  # one infer request per compiled model: calls take turns
            return np.asarray(self._compiled(feeds)[0]).copy()


RUNNERS: dict[str, type[_Runner]] = {"onnx": _OnnxRunner, "openvino": _OpenVINORunner}


def _never_free(runner: _Runner) -> None:
    """Keep a runner inherited through fork alive for good.

    Its runtime's worker threads stayed in the parent; freeing the session in the child
    waits for them forever. One extra reference the child never drops keeps it alive, even
    through interpreter shutdown; its memory is the parent's, shared copy-on-write.
    """
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(runner))


class _ExportedEngine:
    """What both exported engines share: the tokenizer, padding, length-sorted batches, counters."""

    kind = ""

    def __init__(self, key: EngineKey, directory: Path, max_length: int | None = None,
                 threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.key, self.directory = key, directory
        self.manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        self.max_length = int(max_length or self.manifest["max_length"])
        self.inputs: list[str] = list(self.manifest["inputs"])
        self.pad_id = int(self.manifest["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._counter = Tokenizer.from_file(str(directory / "tokenizer.json"))  # no truncation: true lengths
        self.tokenizer.enable_truncation(self.max_length, strategy=self._truncation)
        self.forward_passes = 0
        self.weights: dict[str, Any] = {"model": key.model}
        self.drift_checked: set[str] = set()
        self.fidelity: dict[str, Any] | None = None
        self._threads = threads
        self._tokenizer_lock = threading.Lock()
        self._runner: _Runner | None = None
        self.runner  # compile now: a broken export fails at load, not at the first call

    _truncation = "longest_first"

    def reset_after_fork(self) -> None:
        """Make the engine usable in a forked child: the runtime's thread pool did not survive the fork.

        The graph is compiled again on first use, with ``$LANCEDB_BAAI_THREADS`` threads, which
        a fork sets to 1 (the right size when a server forks one worker per core; a server
        sets its own count after the fork), as the torch engines do.
        """
        self._tokenizer_lock = threading.Lock()
        self.forward_passes = 0
        if self._runner is not None:
            _never_free(self._runner)
        self._runner, self._threads = None, None

    @property
    def runner(self) -> _Runner:
        runner = self._runner
        if runner is None:
            with self._tokenizer_lock:
                if self._runner is None:
                    self._runner = RUNNERS[self.key.backend](self.directory, self.manifest, self.key.dtype,
                                                             self._threads or default_threads())
                runner = self._runner
        return runner

    def token_counts(self, texts: Sequence[str], pair_with: Sequence[str] | None = None) -> list[int]:
        """Tokens per input before truncation (special tokens included; pairs: ``pair_with[i]``, text i)."""
        if not texts:
            return []
        batch = list(zip(pair_with, texts)) if pair_with is not None else list(texts)
        with self._tokenizer_lock:
            encoded = self._counter.encode_batch(batch)
        return [len(e.ids) for e in encoded]

    def _encode(self, batch: list) -> list[Any]:
        with self._tokenizer_lock:
            return self.tokenizer.encode_batch(batch)

    def _batches(self, encodings: list[Any], batch_size: int, progress: bool, desc: str):
        """Yield (indices, graph output) in length order; indices restore the caller's order."""
        lengths = [len(e.ids) for e in encodings]
        with _progress.bar(progress, len(lengths), desc) as bar:
            for index in plan_batches(lengths, batch_size, pass_tokens=pass_cost("cpu")):
                feeds = self._pad([encodings[i] for i in index])
                self.forward_passes += 1
                yield index, self.runner(feeds)
                if bar is not None:
                    bar.update(len(index))

    def _pad(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.inputs}


class ExportedEmbeddingEngine(_ExportedEngine):
    """A bge embedder on an export: texts in, float32 vectors out, in the order given."""

    kind = "embed"

    @property
    def dims(self) -> int:
        return int(self.manifest["dims"])

    def encode(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (already prefixed with any instruction) as an (n, dims) float32 array."""
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        for index, vectors in self._batches(self._encode(list(texts)), batch_size, progress, "embedding"):
            vectors = vectors.astype(np.float32, copy=False)
            if normalize:  # as torch.nn.functional.normalize: x / max(|x|, 1e-12)
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[index] = vectors
        return out


class ExportedRerankEngine(_ExportedEngine):
    """A bge cross-encoder on an export: FlagReranker's scores for query/passage pairs."""

    kind = "rerank"
    _truncation = "only_second"

    def score(self, query: str, passages: Sequence[str], *, normalize: bool = False,
              batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Score each passage against ``query``; the passage is truncated, never the query."""
        out = np.empty(len(passages), dtype=np.float32)
        if not passages:
            return out
        query = self._cap_query(query)
        encodings = self._encode([(query, p) for p in passages])
        for index, logits in self._batches(encodings, batch_size, progress, "reranking"):
            logits = logits.reshape(-1).astype(np.float32, copy=False)
            out[index] = 1.0 / (1.0 + np.exp(-logits)) if normalize else logits
        return out

    def _cap_query(self, query: str) -> str:
        with self._tokenizer_lock:
            offsets = self._counter.encode(query, add_special_tokens=False).offsets
        return cap_query(query, offsets, self.max_length)


ENGINES: dict[str, type[_ExportedEngine]] = {"embed": ExportedEmbeddingEngine, "rerank": ExportedRerankEngine}


def open_export(key: EngineKey, directory: Path, max_length: int | None = None) -> _ExportedEngine:
    """The engine of ``key`` on the export in ``directory`` (torch-free)."""
    return ENGINES[key.kind](key, directory, max_length)
