"""What a stored configuration may make this process do: run a model's code, send texts to a server.

A function rebuilt from a table's metadata (which anyone who sent you the table wrote)
can ask for ``trust_remote_code=True`` or a ``url=`` to embed through. Neither takes effect
unless this process allowed it, in code or in the environment; bge models need no remote
code, and a server on this machine (loopback) is always allowed.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from . import hub as _hub

ALLOW_REMOTE_CODE_ENV = "LANCEDB_BAAI_ALLOW_REMOTE_CODE"
ALLOW_URLS_ENV = "LANCEDB_BAAI_ALLOW_URLS"

_remote_code: set[str] = set()
_urls: set[str] = set()


def allow_remote_code(*names: str) -> None:
    """Let this process run the Python code that the models ``names`` ship (``trust_remote_code``).

    Also possible with ``LANCEDB_BAAI_ALLOW_REMOTE_CODE`` (comma-separated names, ``*`` for any).
    """
    _remote_code.update(_hub.model_id(name) for name in names)


def allow_url(*urls: str) -> None:
    """Let ``url=`` functions in this process send texts to the servers ``urls`` (scheme://host:port).

    Servers on loopback are always allowed; others need this call or ``LANCEDB_BAAI_ALLOW_URLS``
    (comma-separated, ``*`` for any), so a table you were sent cannot route your queries elsewhere.
    """
    _urls.update(_origin(url) for url in urls)


def remote_code_allowed(model: str) -> bool:
    """True when this process allowed remote code for ``model`` (a cache model id)."""
    listed = _listed(ALLOW_REMOTE_CODE_ENV)
    return "*" in listed or model in _remote_code or model in {_hub.model_id(n) for n in listed}


def url_allowed(url: str) -> bool:
    """True for a server on loopback or one this process allowed."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or _is_loopback(host):
        return True
    listed = _listed(ALLOW_URLS_ENV)
    return "*" in listed or _origin(url) in _urls | {_origin(u) for u in listed}


def check_url(url: str) -> None:
    """Refuse a server this process did not allow, saying how to allow it."""
    if not url_allowed(url):
        raise PermissionError(
            f"url {url!r} is not on this machine and this process has not allowed it: a function's "
            "configuration (possibly a table's stored metadata) asks to send texts there. Allow it "
            f"with lancedb_baai.allow_url({_origin(url)!r}) or {ALLOW_URLS_ENV}={_origin(url)}."
        )


def _listed(variable: str) -> set[str]:
    return {item.strip() for item in os.environ.get(variable, "").split(",") if item.strip()}


def _origin(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
