"""Readable tables for people: plain text in a terminal, HTML in a notebook.

:class:`CacheInfo` is what :func:`lancedb_baai.cache_info` returns. It is a ``list`` of
the record dicts, so code indexes, compares, pickles and JSON-encodes it as before; only
printing it changes. :func:`text_table` also lays out the command line's tables.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The columns a person reads first; the full record stays in each dict.
CACHE_COLUMNS: tuple[str, ...] = ("model", "kind", "backend", "device", "dtype", "max_length", "loads", "calls",
                                  "version", "loaded", "fidelity", "weights_mapped", "weights_private")


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping) and "metric" in value:  # fidelity figures: the gated score
        return f"{value['metric']} {value['score']:.4f}"
    if spec and _is_number(value):
        return format(value, spec)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None,
               formats: Mapping[str, str] | None = None) -> str:
    """Rows as an aligned plain-text table: a header, a rule, one line per row; numbers right-aligned.

    ``headers`` replace the column keys as titles; ``formats`` maps a column to the format
    spec of its numbers (``".2f"``).
    """
    formats = formats or {}
    cells = [[_cell(row.get(c), formats.get(c, "")) for c in columns] for row in rows]
    headers = list(headers or columns)
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Iterable[str]) -> str:
        parts = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(values) for values in cells)])


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], caption: str = "") -> str:
    """Rows as an HTML table; every value is escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    caption_html = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class CacheInfo(list):
    """The engine cache records of one process, printable as a table.

    A plain ``list`` of dicts (one per engine: model, served, kind, device, dtype,
    max_length, revision, loads, calls, version, loaded, pid) that prints as an aligned
    table in a terminal and renders as an HTML table in a notebook.
    """

    def _columns(self) -> list[str]:
        columns = list(CACHE_COLUMNS)
        if any(r.get("served", r.get("model")) != r.get("model") for r in self):
            columns.insert(1, "served")  # only after a swap does it say something new
        return columns

    def _title(self) -> str:
        pid = self[0].get("pid", os.getpid()) if self else os.getpid()
        count = len(self)
        if not count:
            return f"engine cache of process {pid}: no engines loaded"
        return f"engine cache of process {pid}: {count} engine{'s' if count != 1 else ''}"

    def _rows(self) -> list[dict[str, Any]]:
        """The records with their weight bytes in MiB, as a person reads them."""
        return [{**r, "weights_mapped": _mib(r.get("weights_mapped_bytes")),
                 "weights_private": _mib(r.get("weights_private_bytes"))} for r in self]

    def __str__(self) -> str:
        if not self:
            return self._title()
        return f"{self._title()}\n{text_table(self._rows(), self._columns())}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{html.escape(self._title())}</p>"
        return html_table(self._rows(), self._columns(), caption=self._title())


def _mib(count: int | None) -> str | None:
    return None if count is None else f"{count / 2**20:.1f} MiB"


MODEL_COLUMNS: tuple[str, ...] = ("vector_column", "source_column", "model", "weights", "revision", "dims", "dtype",
                                  "status")


class TableModels(list):
    """What :func:`lancedb_baai.describe` returns: one dict per embedding column, printable as a table."""

    def _rows(self) -> list[dict[str, Any]]:
        return [{**(row.get("fingerprint") or {}), **row} for row in self]

    def __str__(self) -> str:
        if not self:
            return "no embedding functions recorded in this table"
        return text_table(self._rows(), MODEL_COLUMNS)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(self._rows(), MODEL_COLUMNS, caption="models of this table's vector columns")
