"""Each kind's forward pass as a torch module, built from a model's files: what torch runs and exports trace.

A module takes the padded int64 inputs positionally and returns float32 tensors: the
pooled vector of an embedder (the sentence-transformers modules as written, or bge's
CLS pooling), the single relevance logit of a cross-encoder, or bge-m3's dense, lexical
and ColBERT outputs from one pass of its encoder. Normalisation and the sigmoid are not
in the graph: one module serves both settings, and the engine applies them once for
every runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..models import hub
from ..models.catalog import HEAD_FILES
from .base import INPUTS, Graph, TorchModel


def embedder(path: Path, trust_remote_code: bool = False) -> TorchModel:
    """An embedder: a sentence-transformers layout as written, else a plain export with CLS pooling."""
    if hub.architectures(path, "ForSequenceClassification"):
        raise hub.WrongModelError(
            f"{str(path)!r} is a cross-encoder reranker, not an embedding model. Use it with "
            "'local-baai-rerank' / BAAIReranker, and give 'local-baai' a bge embedder."
        )
    if (path / "modules.json").is_file():
        return _st_embedder(path, trust_remote_code)
    return _plain_embedder(path, trust_remote_code)


def _st_embedder(path: Path, trust_remote_code: bool) -> TorchModel:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", trust_remote_code=trust_remote_code,
                                local_files_only=True)
    inputs = _inputs(model.tokenizer)
    forward = _module(lambda *t: model(dict(zip(inputs, t)))["sentence_embedding"].float(), model)
    return TorchModel(forward, _graph(model.tokenizer, inputs, ("vector",), model.max_seq_length,
                                      hub.embedding_dims(path)))


def _plain_embedder(path: Path, trust_remote_code: bool) -> TorchModel:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    inputs = _inputs(tokenizer)
    forward = _module(lambda *t: model(**dict(zip(inputs, t))).last_hidden_state[:, 0].float(), model)
    return TorchModel(forward, _graph(tokenizer, inputs, ("vector",), native_max_length(model.config, tokenizer),
                                      model.config.hidden_size))


def reranker(path: Path, trust_remote_code: bool = False) -> TorchModel:
    """A single-label cross-encoder: its raw relevance logit, as FlagReranker scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _check_cross_encoder(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    inputs = _inputs(tokenizer)
    forward = _module(lambda *t: model(**dict(zip(inputs, t))).logits.view(-1).float(), model)
    max_length = min(512, native_max_length(model.config, tokenizer))
    return TorchModel(forward, _graph(tokenizer, inputs, ("logit",), max_length, 1))


def _check_cross_encoder(path: Path) -> None:
    """Refuse an embedder or a multi-label classifier before loading it as a reranker."""
    config = hub.read_json(path / "config.json")
    architectures = config.get("architectures") or []
    if not hub.architectures(path, "ForSequenceClassification"):
        raise hub.WrongModelError(
            f"{str(path)!r} is an embedding model ({', '.join(architectures) or 'no classifier head'}), "
            "not a cross-encoder reranker. Use it with 'local-baai' for embeddings, and give "
            "the reranker a bge-reranker model such as 'BAAI/bge-reranker-base'."
        )
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
    if labels != 1:
        raise hub.WrongModelError(
            f"{str(path)!r} is a classifier with {labels} labels; a bge reranker has a single "
            "relevance logit (num_labels=1). Pass a bge-reranker model directory."
        )


def m3(path: Path, trust_remote_code: bool = False) -> TorchModel:
    """bge-m3: one encoder pass gives the CLS vector, each token's lexical weight and its ColBERT vector."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _check_m3_heads(path)
    encoder = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    hidden = encoder.config.hidden_size
    colbert = _head(path / "colbert_linear.pt", hidden, None)
    sparse = _head(path / "sparse_linear.pt", hidden, 1)
    inputs = _inputs(tokenizer)

    def forward(*tensors: Any) -> tuple:
        states = encoder(**dict(zip(inputs, tensors))).last_hidden_state
        return (states[:, 0].float(), torch.relu(sparse(states)).squeeze(-1).float(),
                colbert(states[:, 1:]).float())

    module = _module(forward, torch.nn.ModuleDict({"encoder": encoder, "colbert": colbert, "sparse": sparse}))
    special = sorted(_special_ids(tokenizer))
    graph = _graph(tokenizer, inputs, ("dense", "sparse", "colbert"), native_max_length(encoder.config, tokenizer),
                   hidden, {"special_ids": special, "colbert_dims": int(colbert.out_features)})
    return TorchModel(module, graph)


def _check_m3_heads(path: Path) -> None:
    missing = [name for name in HEAD_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(path)!r} is not a complete bge-m3 model: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. bge-m3 keeps its ColBERT and sparse "
            "heads in colbert_linear.pt and sparse_linear.pt beside the encoder weights; copy "
            "the whole BAAI/bge-m3 snapshot, or use 'local-baai' for a dense-only model."
        )


def _head(file: Path, hidden: int, out_features: int | None) -> Any:
    """A Linear head from its saved state dict, checked against the encoder's width."""
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True)
    weight = state.get("weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != hidden or (
            out_features is not None and weight.shape[0] != out_features):
        shape = None if weight is None else tuple(weight.shape)
        raise hub.WrongModelError(
            f"{str(file)!r} holds a weight of shape {shape}, but the encoder is {hidden} wide: "
            f"expected ({out_features or 'n'}, {hidden}). The head files must come from the same bge-m3 "
            "checkpoint as the encoder."
        )
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    head.load_state_dict(state)
    return head


def colbert_dims_from_file(path: Path) -> int:
    """Width of the ColBERT vectors saved in ``path``'s colbert_linear.pt, without the encoder."""
    import torch

    file = path / "colbert_linear.pt"
    if not file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no colbert_linear.pt, so it is not a bge-m3 model with ColBERT "
            "vectors. Pass the directory of a bge-m3 snapshot."
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    return int(state["weight"].shape[0])


def _special_ids(tokenizer: Any) -> set[int]:
    """The tokens bge-m3 gives no lexical weight: cls, eos, pad and unk (those the tokenizer has)."""
    ids = (getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "eos", "pad", "unk"))
    return {int(i) for i in ids if i is not None}


def native_max_length(config: Any, tokenizer: Any) -> int:
    """The longest input the model was built for: the tokenizer's limit within the positions."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta"):
        positions -= 2  # RoBERTa-style models offset positions by the padding index
    declared = getattr(tokenizer, "model_max_length", None)
    if declared is None or declared > 1_000_000:
        return positions
    return min(declared, positions)


def _inputs(tokenizer: Any) -> tuple[str, ...]:
    names = set(getattr(tokenizer, "model_input_names", None) or INPUTS[:2])
    return tuple(name for name in INPUTS if name in names)


def _graph(tokenizer: Any, inputs: tuple[str, ...], outputs: tuple[str, ...], max_length: int, dims: int,
           extra: dict[str, Any] | None = None) -> Graph:
    return Graph(inputs, outputs, _tokenizer_json(tokenizer), int(max_length), int(dims),
                 int(tokenizer.pad_token_id or 0), extra or {})


def _tokenizer_json(tokenizer: Any) -> str:
    """The model's fast (Rust) tokenizer as JSON, with padding and truncation off (the engine sets them)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise hub.BrokenModelError(
            f"{getattr(tokenizer, 'name_or_path', 'this model')!r} has only a slow (Python) tokenizer. "
            "Save the model with a fast tokenizer (tokenizer.json: AutoTokenizer.from_pretrained(..., "
            "use_fast=True).save_pretrained(...)), which every bge model on the hub has.")
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.no_truncation()
    return fast.to_str()


def _module(forward: Any, owner: Any) -> Any:
    """A torch module whose ``forward(*tensors)`` is ``forward`` and whose parameters are ``owner``'s."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.owner = owner  # registered, so .to()/.eval() and the exporters see its parameters

        def forward(self, *tensors: Any) -> Any:
            return forward(*tensors)

    return Forward().eval()


@contextmanager
def quiet_transformers(show_progress: bool = False) -> Iterator[None]:
    """No transformers progress bar or load report inside the block unless asked for."""
    from transformers.utils import logging as hf_logging

    bar_was_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if not show_progress:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
