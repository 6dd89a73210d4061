"""The server's log lines: the package's own (loads, admin actions) and one access line per request.

Structured lines carry their fields in ``record.fields``: ``--log-format text`` writes them
as ``key=value`` pairs, ``--log-format json`` as one JSON object per line. Access lines
hold what a request was (method, route, status, counts, time, model version, request id),
never what it carried: no input text, no key, no query string.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

ACCESS_LOGGER = "lancedb_baai.serve.access"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(header: str | None) -> str:
    """The caller's ``X-Request-Id`` if it is a plain token (it lands in the log), else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def log_fields(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """One structured line: ``event`` and ``fields`` (``key=value`` in text, keys in JSON)."""
    if logger.isEnabledFor(level):
        text = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        logger.log(level, "%s %s", event, text, extra={"fields": {"event": event, **fields}})


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    text = "-" if value is None else str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"=" for c in text) else text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the record's fields or its message."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name}
        fields = getattr(record, "fields", None)
        payload.update(fields) if isinstance(fields, dict) else payload.update(message=record.getMessage())
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, level: str) -> None:
    """Send the package's log lines (access lines included) to stderr in ``log_format``."""
    logger = logging.getLogger("lancedb_baai")
    for handler in [h for h in logger.handlers if getattr(h, "_lancedb_baai_serve", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler._lancedb_baai_serve = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """uvicorn's own lines (startup, shutdown) in the same format as the package's."""
    factory = "lancedb_baai.serve._logs.JsonFormatter" if log_format == "json" else \
        "lancedb_baai.serve._logs.TextFormatter"
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"default": {"()": factory}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                     "stream": "ext://sys.stderr"}},
            "loggers": {"uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
                        "uvicorn.error": {"level": level.upper()}}}
