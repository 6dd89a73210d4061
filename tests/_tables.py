"""LanceDB tables for the tests: a text column (and an ``id`` key), vectors made by ``local-baai``."""

from __future__ import annotations

import lancedb
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector


def text_table(db, fn, rows: list[dict], name: str = "docs"):
    """Table ``name`` in ``db`` whose ``vector`` column ``fn`` fills from ``text``, with ``rows`` added."""

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(db).create_table(name, schema=Doc)
    table.add(rows)
    return table


def keyed_table(db, model, texts: list[str], name: str = "docs", parts: int = 1):
    """Table ``name`` in ``db``: row ``i`` is ``texts[i]``, added in ``parts`` writes (so as many fragments)."""
    fn = get_registry().get("local-baai").create(name=str(model), dtype="float32")

    class Doc(LanceModel):
        id: int
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(db).create_table(name, schema=Doc)
    step = -(-len(texts) // parts)
    for start in range(0, len(texts), step):
        table.add([{"id": i, "text": texts[i]} for i in range(start, min(start + step, len(texts)))])
    return table
