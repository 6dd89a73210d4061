"""`local-baai-rerank` and :class:`BAAIReranker`: bge cross-encoders behind ``table.search().rerank()``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from lancedb.embeddings import EmbeddingFunction, register
from lancedb.rerankers import Reranker

from ..engines import progress as _progress
from ..engines import kinds
from .config import EngineConfig
from .inputs import NoRetry, check_query, check_texts

ReturnScore = Literal["relevance", "all"]


@register("local-baai-rerank")
@kinds.function_of("rerank")
class BAAIRerankFunction(NoRetry, EngineConfig, EmbeddingFunction):
    """A bge cross-encoder, configured once and loaded once per process.

    Scores follow FlagEmbedding's ``FlagReranker``: the raw logit of the single-label
    classifier as float32, or its sigmoid with ``normalize=True``. It is registered so a
    reranker configuration can be created by name, but it does not embed: use
    :meth:`score` or :meth:`reranker`.

    Parameters
    ----------
    name : str, default "BAAI/bge-reranker-base"
        Hub id or local directory of a bge-reranker model.
    backend, precision, min_fidelity
        The runtime, its precision and the fidelity gate's threshold, as for
        :class:`~lancedb_baai.BAAIEmbeddings` (rerankers are gated on the Spearman
        correlation of their scores with torch float32).
    normalize : bool, default False
        Return sigmoid(logit) in [0, 1] instead of the raw logit.
    max_length : int or None, default None
        Tokens per (query, passage) pair; None is 512 (or the model's own limit if lower).
        The passage is truncated to fit, never the query (capped at 3/4 of the limit).
    url : str or None, default None
        Score through a ``lancedb-baai serve`` server at this address instead of loading the
        model here; ``name`` must be a reranker id that server serves.
    api_key : str or None, default None
        The key of a server started with ``--api-key`` (in ``create()``: ``"$var:NAME"``).
    """

    engine_kind = "rerank"
    name: str = "BAAI/bge-reranker-base"
    normalize: bool = False

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to ``query``, in the order given."""
        check_query(query)
        passages = check_texts(passages, "passage",
                               advice="A cross-encoder scores strings only: fill or drop such passages.")
        progress = _progress.wanted(self.show_progress, len(passages))
        scores = self.engine().score(query, passages, normalize=self.normalize,
                                     batch_size=self.batch_size, progress=progress)
        return scores.tolist()

    def reranker(self, column: str = "text", return_score: ReturnScore = "relevance") -> BAAIReranker:
        """A LanceDB reranker that scores the ``column`` of search results with this model."""
        return BAAIReranker(function=self, column=column, return_score=return_score)

    def _not_an_embedder(self, *args, **kwargs):
        raise TypeError(
            f"'local-baai-rerank' ({self.name}) is a cross-encoder reranker, not an embedding "
            "function: it cannot fill a vector column. Use 'local-baai' for vectors, and "
            "rerank search results with table.search(...).rerank(reranker=fn.reranker())."
        )

    compute_query_embeddings = _not_an_embedder
    compute_source_embeddings = _not_an_embedder
    ndims = _not_an_embedder


def model_name_option(model_name: str | None, options: dict[str, Any], default: str) -> str:
    """``model_name``, or ``name`` popped from ``options`` (the registered functions' keyword)."""
    name = options.pop("name", None)
    if model_name is not None and name is not None and model_name != name:
        raise ValueError(f"model_name={model_name!r} and name={name!r} disagree: pass one of them")
    return model_name or name or default


def check_options(reranker: type, function: type[EmbeddingFunction], options: dict[str, Any]) -> None:
    """Refuse a keyword that neither ``reranker`` nor its ``function`` takes, listing the options of both."""
    valid = set(function.model_fields) - set(EmbeddingFunction.model_fields)  # LanceDB's max_retries is unused
    unknown = sorted(set(options) - valid)
    if unknown:
        own = sorted(p for p in inspect.signature(reranker.__init__).parameters if p not in ("self", "options"))
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {unknown} for {reranker.__name__}; "
                         f"its own options are {own}, and it passes on those of {function.__name__}: "
                         f"{sorted(valid)}")


def check_return_score(value: str) -> str:
    """``return_score`` if LanceDB knows it, else an error listing the accepted values."""
    if value not in ("relevance", "all"):
        raise ValueError(f"return_score {value!r} is not supported; use 'relevance' or 'all'")
    return value


class BAAIReranker(Reranker):
    """Rerank LanceDB vector, full-text, hybrid and multi-vector results with a bge cross-encoder.

    Adds a float32 ``_relevance_score`` column and sorts by it, highest first. With
    ``return_score="relevance"`` the search's own ``_distance``/``_score`` columns are
    dropped; ``"all"`` keeps them. Rows whose text is null are kept, unscored, last.
    The object is configuration only: instances and pickled copies share one engine.

    Parameters
    ----------
    model_name : str, default "BAAI/bge-reranker-base"
        Hub id or local directory of a bge-reranker model (LanceDB's rerankers call it
        ``model_name``); ``name=``, the keyword of the registered functions, means the same.
    column : str, default "text"
        The result column that holds the passage text.
    return_score : {"relevance", "all"}, default "relevance"
    function : BAAIRerankFunction, optional
        An existing configuration to use instead of ``model_name`` and ``options``.
    **options
        Engine options of :class:`BAAIRerankFunction` (device, dtype, normalize, batch_size, ...).
    """

    def __init__(self, model_name: str | None = None, column: str = "text",
                 return_score: ReturnScore = "relevance", *,
                 function: BAAIRerankFunction | None = None, **options: Any) -> None:
        super().__init__(check_return_score(return_score))
        if function is None:
            check_options(type(self), BAAIRerankFunction, options)
            function = BAAIRerankFunction(
                name=model_name_option(model_name, options, "BAAI/bge-reranker-base"), **options)
        self.function = function
        self.column = column

    def __repr__(self) -> str:
        options = {"name": self.function.name, **self.function.public_dump(),
                   "column": self.column, "return_score": self.score}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"

    __str__ = __repr__

    def rerank_vector(self, query: str, vector_results: pa.Table) -> pa.Table:
        return self._finish(self._rerank(vector_results, query))

    def rerank_fts(self, query: str, fts_results: pa.Table) -> pa.Table:
        return self._finish(self._rerank(fts_results, query))

    def rerank_hybrid(self, query: str, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        if self.score == "all":
            combined = self._merge_and_keep_scores(vector_results, fts_results)
        else:
            combined = self.merge_results(vector_results, fts_results)
        return self._finish(self._rerank(combined, query))

    def _rerank(self, results: pa.Table, query: str) -> pa.Table:
        check_query(query)
        if len(results) == 0:
            return self._handle_empty_results(results)
        if self.column not in results.column_names:
            raise ValueError(
                f"column {self.column!r} not found in results; columns are {results.column_names}. "
                "Pass column= the name of the text column."
            )
        passages = check_texts(results[self.column].to_pylist(), "passage", allow_null=True, advice=(
            f"Rerank a text column: pass column= the name of the column that holds the passages "
            f"(now {self.column!r})."))
        present = [i for i, p in enumerate(passages) if p is not None]
        scores = np.full(len(passages), np.nan, dtype=np.float32)
        scores[present] = self.function.score(query, [passages[i] for i in present])
        score_column = pa.array(scores, type=pa.float32(), mask=np.isnan(scores))
        return results.append_column("_relevance_score", score_column)

    def _finish(self, results: pa.Table) -> pa.Table:
        if self.score == "relevance":
            results = results.drop_columns([c for c in ("_distance", "_score") if c in results.column_names])
        return results.sort_by([("_relevance_score", "descending")])
