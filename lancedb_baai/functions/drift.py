"""The drift guard: a table's vectors are only searched and extended with the model that made them.

When a ``local-baai`` function fills a column, LanceDB stores the function's arguments in
the table's metadata, and this package adds the fingerprint of the model
(:mod:`._fingerprint`). LanceDB rebuilds the function from that metadata for every
``table.add`` and every search by text, so the rebuilt function knows what made the
column; the first time it gets an engine it compares that engine's fingerprint with the
stored one and raises :class:`EmbeddingDriftError` if they differ. The outcome is kept on
the engine, so later calls cost one set lookup; a swap or a rollback brings another engine,
which is checked again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..models import fingerprint as _fingerprint
from ..engines.report import TableModels

logger = logging.getLogger(__name__)

ON_DRIFT_ENV = "LANCEDB_BAAI_ON_DRIFT"
"""Environment variable that sets the drift policy for every function of this process ("error" or "warn")."""


class EmbeddingDriftError(RuntimeError):
    """The model serving a table's function is not the one that made the table's vectors.

    Attributes
    ----------
    stored, current : dict
        The fingerprint recorded with the column and the one of the model serving now.
    differences : list of str
        The fingerprint fields that differ ("weights", "pooling", "dims", ...).
    """

    def __init__(self, stored: dict[str, Any], current: dict[str, Any], differences: list[str]) -> None:
        self.stored, self.current, self.differences = stored, current, differences
        changes = "; ".join(f"{f} {stored.get(f)!r} -> {current.get(f)!r}" for f in differences)
        super().__init__(
            f"embedding drift: the column's vectors were made by {_fingerprint.short(stored)}, but this "
            f"process would embed with {_fingerprint.short(current)} (differs in {changes}). Its query "
            "vectors are not comparable with the stored ones, so search would return noise. Either serve "
            "the column's model again (lancedb_baai.rollback(...) after a swap; restore the model files or "
            "pin revision=...), or re-embed the column with the new model (lancedb_baai.reembed(table, "
            "function) or `lancedb-baai reembed URI TABLE --model NAME`). To go on anyway, create the "
            f"function with on_drift='warn' or set {ON_DRIFT_ENV}=warn."
        )


def policy(function: Any) -> str:
    """The drift policy in force for ``function``: the environment's, else the function's ``on_drift``."""
    value = os.environ.get(ON_DRIFT_ENV)
    if value is None or not value.strip():
        return function.on_drift
    if value not in ("error", "warn"):
        raise ValueError(f"{ON_DRIFT_ENV}={value!r} is not a drift policy; use 'error' or 'warn'")
    return value


def check(function: Any, loaded: Any, stored: dict[str, Any]) -> None:
    """Refuse (or warn about) the ``loaded`` engine if it does not make the vectors ``stored`` describes."""
    token = json.dumps(stored, sort_keys=True, default=str)
    if token in loaded.checked:
        return
    recorded = stored.get("fingerprint")
    if not isinstance(recorded, dict):
        logger.info("this table was written by lancedb_baai %s, which recorded no model fingerprint: its "
                    "vectors cannot be checked against %s", stored.get("version", "?"), function.name)
        loaded.checked.add(token)
        return
    current = function.fingerprint_of(loaded)
    differences = _fingerprint.differences(recorded, current)
    if differences:
        error = EmbeddingDriftError(recorded, current, differences)
        if policy(function) == "error":
            raise error
        logger.warning("%s (on_drift='warn': going on)", error)
    elif recorded.get("dtype") != current.get("dtype"):
        logger.info("%s: same weights as the column's vectors, in %s instead of %s (allowed)",
                    function.name, current.get("dtype"), recorded.get("dtype"))
    loaded.checked.add(token)


def describe(table: Any) -> TableModels:
    """Which model made each embedding column of ``table``, and whether this process would drift from it.

    One record per vector column with an embedding function: ``vector_column``,
    ``source_column``, ``function`` (the registered name), ``model``, ``fingerprint`` (as
    recorded; None for tables written before fingerprints or by another package),
    ``written_by`` (the package version) and ``status``: "ok", "drift: <fields>",
    "unrecorded" or "not lancedb_baai". Nothing is loaded: the current fingerprint is the
    loaded engine's, else read from the model's files.
    """
    rows = []
    for column, conf in table.embedding_functions.items():
        function = conf.function
        row: dict[str, Any] = {
            "vector_column": column, "source_column": conf.source_column,
            "function": getattr(function, "__embedding_function_registry_alias__", type(function).__name__),
            "model": getattr(function, "name", None), "fingerprint": None, "written_by": None,
        }
        if not callable(getattr(function, "stored_provenance", None)):  # not one of this package's embedders
            rows.append({**row, "status": "not lancedb_baai"})
            continue
        stored = function.stored_provenance() or {}
        row.update(fingerprint=stored.get("fingerprint"), written_by=stored.get("version"))
        rows.append({**row, "status": _status(function, row["fingerprint"])})
    return TableModels(rows)


def _status(function: Any, recorded: dict[str, Any] | None) -> str:
    if not isinstance(recorded, dict):
        return "unrecorded"
    try:
        current = function.fingerprint()
    except (OSError, ValueError) as exc:
        return f"model unavailable here: {exc}"
    if current is None:
        return "ok (served by url: not checked here)"
    differences = _fingerprint.differences(recorded, current)
    return f"drift: {', '.join(differences)}" if differences else "ok"
