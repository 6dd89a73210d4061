"""Input checks and the retry policy shared by every function, reranker and the CLI.

One home for "what may go into a model": every public entry point calls these before any
model work or table write, so a bad row fails fast with the row and what to do, and
nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_ADVICE = "bge models embed strings only: fill or drop such rows (nothing was written)."


def check_texts(texts: Sequence[Any], what: str = "text", advice: str = DEFAULT_ADVICE,
                allow_null: bool = False) -> list[str]:
    """The texts as a list, or an error naming the first row that is not a string (nor null, if allowed)."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"{what}s must be a list of strings, got a single {type(texts).__name__}; "
                         "wrap it in a list")
    texts = list(texts)
    for row, value in enumerate(texts):
        if not isinstance(value, str) and not (allow_null and value is None):
            if isinstance(value, bytes) and len(texts) > 1 and not any(isinstance(v, str) for v in texts):
                raise ValueError(_all_bytes(what, len(texts), advice))
            problem = "is null" if value is None else f"is a {type(value).__name__}, not a string"
            raise ValueError(f"{what} at row {row} {problem}. {advice}")
    return texts


def _all_bytes(what: str, count: int, advice: str) -> str:
    """Why no row is named: Arrow turns a column of str and bytes into binary, so all rows come as bytes."""
    return (f"{what}: all {count} rows arrived as bytes, not strings. When any row of a LanceDB add() holds "
            "bytes, Arrow stores the whole column as binary, so the rows that were bytes cannot be told "
            "from here: find them in your rows with isinstance(value, bytes) and decode them "
            f"(value.decode('utf-8')). {advice}")


def check_query(query: Any, param: str = "query",
                purpose: str = "the text the results should be reranked against") -> str:
    """The query as a non-empty string, or an error that names ``param`` and what was passed instead."""
    if not isinstance(query, str):
        raise ValueError(f"{param} must be a string, got {type(query).__name__} ({_short(query)}): "
                         f"pass {purpose}")
    if not query.strip():
        raise ValueError(f"{param} is empty: pass {purpose}")
    return query


def check_queries(query: Any) -> list[str]:
    """What LanceDB hands ``compute_query_embeddings`` (a string, or a list of them) as a list.

    Anything else, such as ``table.search({"a": 1})``, is refused rather than iterated.
    """
    queries = list(query) if isinstance(query, (list, tuple)) else [query]
    return [check_query(q, purpose="the text to search for") for q in queries]


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class NoRetry:
    """Local inference does not get better by retrying: fail at once with the real error.

    LanceDB wraps embedding calls in up to 7 retries with back-off, which suits remote APIs;
    for a local model it only delays the real error by a minute.
    """

    def compute_query_embeddings_with_retry(self, *args, **kwargs):
        return self.compute_query_embeddings(*args, **kwargs)

    def compute_source_embeddings_with_retry(self, *args, **kwargs):
        return self.compute_source_embeddings(*args, **kwargs)
