"""A Lance schema with top-level fields dropped and renamed, every other field keeping its id.

Lance tracks a column by its field id, not its name. Its public calls rename or drop a
column only as a commit of their own (``alter_columns``, ``drop_columns``), and
``LanceSchema.from_pyarrow`` numbers fields from 0, so neither can describe "the columns
just added, under the names of the ones they replace" for the same ``Merge`` commit that
adds them. A ``LanceSchema`` pickles as its metadata (JSON) and one protobuf ``Field``
message per field (Lance's ``file.proto``: 2 is the name, 3 the id, 4 the parent's id);
this module edits those messages and rebuilds the schema from them. ``tests/test_reembed.py``
checks the result against what Lance reads back, so a change of that format fails there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

_NAME, _ID, _PARENT = 2, 3, 4
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _entries(message: bytes) -> Iterator[tuple[int, Any, bytes]]:
    """(field number, value, raw bytes of the entry) for each entry of a protobuf message."""
    at = 0
    while at < len(message):
        start = at
        key, at = _varint(message, at)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(message, at)
        elif wire == _BYTES:
            length, at = _varint(message, at)
            value, at = message[at:at + length], at + length
        elif wire in (_FIXED64, _FIXED32):
            width = 8 if wire == _FIXED64 else 4
            value, at = message[at:at + width], at + width
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} in a Lance field: this lance version "
                             "stores schemas in a form lancedb_baai does not know; please report it")
        yield number, value, message[start:at]


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _renamed(message: bytes, name: str) -> bytes:
    encoded = name.encode()
    return b"".join(_encode_varint(_NAME << 3 | _BYTES) + _encode_varint(len(encoded)) + encoded
                    if number == _NAME else raw for number, _, raw in _entries(message))


def rebuild(schema: Any, drop: set[str], rename: Mapping[str, str], metadata: Mapping[bytes, bytes]) -> Any:
    """``schema`` without the top-level fields in ``drop`` (children too), ``rename`` applied, and ``metadata``.

    Field ids and everything else about the kept fields are as they were, so the data
    files Lance wrote for them still match.
    """
    from lance.schema import LanceSchema

    _, *messages = schema.__reduce__()[1]
    kept, dropped = [], set()
    for message in messages:
        fields = {number: value for number, value, _ in _entries(message)}
        field_id, parent = _int32(fields.get(_ID, 0)), _int32(fields.get(_PARENT, 0))
        name = fields.get(_NAME, b"").decode()
        if parent in dropped or (parent == -1 and name in drop):
            dropped.add(field_id)
            continue
        kept.append(_renamed(message, rename[name]) if parent == -1 and name in rename else message)
    as_json = json.dumps({key.decode(): list(value) for key, value in metadata.items()})
    return LanceSchema._from_protos(as_json, *kept)


def to_document(schema: Any) -> dict[str, Any]:
    """``schema`` as JSON-ready data (its metadata and field messages), for a checkpoint file."""
    metadata, *messages = schema.__reduce__()[1]
    return {"metadata": metadata, "fields": [message.hex() for message in messages]}


def from_document(document: dict[str, Any]) -> Any:
    """The schema :func:`to_document` described."""
    from lance.schema import LanceSchema

    return LanceSchema._from_protos(document["metadata"], *(bytes.fromhex(m) for m in document["fields"]))
