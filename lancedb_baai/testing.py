"""Tiny random bge-shaped models for offline tests, demos and benchmarks.

Nothing here downloads anything: each builder writes a small randomly initialised
model to a directory, in one of the layouts users actually have on disk. Scores and
vectors from these models are meaningless; their shapes, layouts and code paths are
the real ones, which is what tests and smoke runs need.
"""

from __future__ import annotations

import json
from pathlib import Path

from .runtimes.torch_modules import quiet_transformers

_WORDS = (
    "the a an of and to in is it for on with as by at from or not be are this that "
    "python function class list dict set tuple string bytes int float return value "
    "error exception module import package loop while if else try except finally "
    "with yield lambda def async await code data model search query passage text "
    "object method attribute name scope variable global local call argument keyword "
    "operator number true false none file open read write path sort key index slice"
).split()
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCT = ".,:;!?()[]{}'\"-_=+*/<>@#%&"


def words(count: int, offset: int = 0) -> str:
    """``count`` words of the tiny models' vocabulary, each a single token: exactly ``count`` tokens."""
    return " ".join(_WORDS[(offset + i) % len(_WORDS)] for i in range(count))


def write_vocab(directory: str | Path, extra_special: tuple[str, ...] = ()) -> Path:
    """Write a small WordPiece vocabulary that covers plain English and code text."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_special]
    tokens += _WORDS + list(_CHARS) + list(_PUNCT) + [f"##{c}" for c in _CHARS]
    tokens = list(dict.fromkeys(tokens))  # one id per token, or ids overflow the embedding
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def _tokenizer(directory: Path, max_length: int, **special: str):
    """A fast WordPiece tokenizer over :func:`write_vocab`'s vocabulary, on transformers 4.x and 5.x.

    transformers 4.x takes the vocabulary file as ``vocab_file=`` (and ignores ``vocab=``);
    5.x takes it as ``vocab=`` (and ignores ``vocab_file=``): ask the signature which.
    """
    import inspect

    from transformers import BertTokenizerFast

    vocab = str(write_vocab(directory))
    keyword = "vocab_file" if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab"
    return BertTokenizerFast(**{keyword: vocab}, model_max_length=max_length, **special)


def _bert_config(vocab_size: int, hidden: int, layers: int, max_length: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=hidden * 2,
        max_position_embeddings=max_length + 2,
        **extra,
    )


def _build_bert(directory: str | Path, model_class: str, hidden: int, layers: int, max_length: int,
                seed: int, **config) -> Path:
    """Save a randomly initialised ``transformers.<model_class>`` and its tokenizer to ``directory``."""
    import torch
    import transformers

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(directory, max_length)
    model_config = _bert_config(len(tokenizer), hidden, layers, max_length, **config)
    with quiet_transformers():
        getattr(transformers, model_class)(model_config).eval().save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def build_plain_embedder(
    directory: str | Path, hidden: int = 32, layers: int = 2, max_length: int = 128, seed: int = 0
) -> Path:
    """A plain ``AutoModel.save_pretrained`` export: weights and tokenizer, no ``modules.json``."""
    return _build_bert(directory, "BertModel", hidden, layers, max_length, seed)


def build_st_embedder(
    directory: str | Path,
    hidden: int = 32,
    layers: int = 2,
    max_length: int = 128,
    pooling: str = "cls",
    normalize: bool = True,
    seed: int = 0,
) -> Path:
    """A sentence-transformers layout as the BAAI repos ship it: Transformer, Pooling, Normalize."""
    directory = build_plain_embedder(directory, hidden, layers, max_length, seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    pooling_dir = directory / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (pooling_dir / "config.json").write_text(json.dumps(pooling_config), encoding="utf-8")
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    bert_config = {"max_seq_length": max_length, "do_lower_case": False}
    (directory / "sentence_bert_config.json").write_text(json.dumps(bert_config), encoding="utf-8")
    return directory


def build_cross_encoder(
    directory: str | Path, hidden: int = 32, layers: int = 2, max_length: int = 128, seed: int = 0
) -> Path:
    """A single-label sequence classifier, shaped like bge-reranker-base (``num_labels=1``)."""
    return _build_bert(directory, "BertForSequenceClassification", hidden, layers, max_length, seed, num_labels=1)


def sharpen(directory: str | Path, model_class: str, std: float, seed: int) -> Path:
    """Redraw a saved model's weight matrices with standard deviation ``std``, in place.

    Random models initialised the usual way (std 0.02) give nearly the same vector or
    score for every input, so a contract test could not tell one text from another.
    With wider weights different inputs give clearly different outputs. ``model_class``
    names the ``transformers`` class that loads the directory, e.g. ``"AutoModel"``.
    """
    import torch
    import transformers

    model = getattr(transformers, model_class).from_pretrained(str(directory))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    with quiet_transformers():
        model.save_pretrained(str(directory))
    return Path(directory)


def python_reference_paragraphs(limit: int | None = None, min_chars: int = 40) -> list[dict[str, str]]:
    """Paragraphs of Python's own reference topics (``pydoc_data``), a corpus every Python ships.

    Returns records ``{"topic": ..., "text": ...}`` in a stable order, skipping fragments
    shorter than ``min_chars``.
    """
    from pydoc_data.topics import topics

    rows = []
    for topic in sorted(topics):
        for paragraph in topics[topic].split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text) >= min_chars:
                rows.append({"topic": topic, "text": text})
                if limit is not None and len(rows) >= limit:
                    return rows
    return rows


def build_m3_model(
    directory: str | Path,
    hidden: int = 32,
    layers: int = 2,
    max_length: int = 128,
    std: float = 0.2,
    sparse_bias: float = 0.1,
    seed: int = 0,
) -> Path:
    """A bge-m3 shaped model: an encoder plus ``colbert_linear.pt`` and ``sparse_linear.pt``.

    The files are laid out as in the BAAI/bge-m3 snapshot, so FlagEmbedding's
    ``BGEM3FlagModel`` loads the directory too. The encoder is a tiny BERT whose tokenizer
    names its bos/eos tokens as XLM-R's do (``[CLS]``/``[SEP]`` here). Weights are drawn
    with standard deviation ``std`` (wider than the usual 0.02, so different texts get
    clearly different outputs), and the sparse head's bias makes most token weights positive.
    """
    import torch
    from transformers import BertModel

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(directory, max_length, bos_token="[CLS]", eos_token="[SEP]")
    # Ids, not len(tokenizer): the shared vocabulary repeats a few words, so the last id is past the length.
    vocab_size = max(tokenizer.get_vocab().values()) + 1
    config = _bert_config(vocab_size, hidden, layers, max_length, initializer_range=std)
    with quiet_transformers():
        BertModel(config).eval().save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    colbert, sparse = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        sparse.bias.fill_(sparse_bias)
    torch.save(colbert.state_dict(), directory / "colbert_linear.pt")
    torch.save(sparse.state_dict(), directory / "sparse_linear.pt")
    return directory
