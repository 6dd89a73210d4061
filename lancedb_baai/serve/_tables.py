"""The tables a server is told about (``--table URI:NAME``), and which of them a swap leaves behind.

A table's column records the fingerprint of the model that made its vectors (see
:mod:`lancedb_baai.drift`). A swap or rollback affects the columns that the engine served
until now made, and that the engine serving from now on would not: queries embedded by it
would be noise against their vectors until the table is re-embedded or the model rolled
back. Tables are opened when an admin action asks, so a table re-embedded meanwhile is
judged as it is now.
"""

from __future__ import annotations

import logging
from typing import Any

from ..models import fingerprint as _fingerprint

logger = logging.getLogger(__name__)


def parse(spec: str) -> tuple[str, str]:
    """``URI:NAME`` as (uri, name); the last colon separates them, so ``s3://bucket/db:docs`` works."""
    uri, sep, name = spec.rpartition(":")
    if not sep or not uri or not name or "/" in name:
        raise ValueError(f"--table {spec!r} is not URI:NAME; pass the database and the table name, "
                         "e.g. --table ./db:docs")
    return uri, name


def affected(tables: list[str], before: Any, after: Any) -> list[dict[str, Any]]:
    """The columns of ``tables`` whose vectors ``before`` made and ``after`` would not, with what differs.

    A table that cannot be opened is listed with the error instead: the swap has happened
    either way, and the operator should know which tables went unchecked.
    """
    found = []
    for spec in tables:
        try:
            found += [{"table": spec, **column} for column in _columns(spec, before, after)]
        except Exception as exc:  # a missing or unreadable table must not fail the swap that already happened
            logger.warning("could not check table %r against the swapped model: %s", spec, exc)
            found.append({"table": spec, "error": f"{type(exc).__name__}: {exc}"})
    return found


def _columns(spec: str, before: Any, after: Any) -> list[dict[str, Any]]:
    import lancedb

    uri, name = parse(spec)
    table = lancedb.connect(uri).open_table(name)
    columns = []
    for column, conf in table.embedding_functions.items():
        function = conf.function
        recorded = (getattr(function, "stored_provenance", lambda: None)() or {}).get("fingerprint")
        if not isinstance(recorded, dict):
            continue  # another package's function, or a table written before fingerprints
        if _fingerprint.differences(recorded, function.fingerprint_of(before)):
            continue  # not this model's vectors
        differences = _fingerprint.differences(recorded, function.fingerprint_of(after))
        if differences:
            columns.append({"column": column, "differences": differences,
                            "vectors_made_by": _fingerprint.short(recorded)})
    return columns
