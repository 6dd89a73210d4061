"""The remote runtime: ``url=`` functions embed and rerank through a ``lancedb-baai serve`` server.

Unlike the local runtimes it sends text: the server tokenizes and runs its own engines
(there are no model files in this process). :func:`engine` gives an object with the
local engines' calls (``encode``, ``score``, ``dims``), so a function runs the same
code whether its model is here or there.

Needs httpx only (no torch, no FastAPI). Connections are pooled per server and per process
(a forked child opens its own). Requests are retried only when they cannot have been
served: a connection error, or a 503 from a full queue (after its Retry-After). Any other
refusal raises at once with the server's message. Requests say ``allow_empty``: a table's
empty texts are embedded and scored as the library does locally (other clients get 422).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import Any

import numpy as np

from ..models import trust as _trust

CHUNK = 256
"""Texts per request: within the server's default limit of 512 (``--max-texts``)."""

ATTEMPTS = 4
TIMEOUT_S = 120.0

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_models: dict[tuple[str, str, str], dict[str, Any]] = {}


def base_url(url: str) -> str:
    """``url`` without a trailing slash or ``/v1``: the server's root."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def model(url: str, name: str, kind: str, api_key: str | None = None) -> dict[str, Any]:
    """The server's ``/v1/models`` record serving ``name`` as ``kind``; checked once per process.

    ``name`` must be the id the server serves the model under, or the model serving it.
    """
    key = (base_url(url), name, kind)
    record = _models.get(key)
    if record is None:
        _trust.check_url(key[0])
        listed = _request("GET", key[0], "/v1/models", api_key=api_key)["data"]
        matches = [r for r in listed if name.rstrip("/") in (r["id"].rstrip("/"), str(r.get("served", "")).rstrip("/"))]
        served = [f"{r['id']} ({r['kind']}: {r.get('served')})" for r in listed]
        if not matches:
            raise ValueError(f"the server at {key[0]} does not serve {name!r}; it serves {served}. "
                             f"Pass name= one of those ids, or url= a server that serves {name!r}")
        if matches[0]["kind"] != kind:
            raise ValueError(f"the server at {key[0]} serves {name!r} as a {matches[0]['kind']} model, "
                             f"not {kind}; use it with the matching function")
        record = _models[key] = matches[0]
    return record


def embed(url: str, name: str, texts: list[str], normalize: bool = True,
          api_key: str | None = None) -> np.ndarray:
    """Vectors for ``texts`` (sent as passages: any instruction is already prepended), float32 (n, dims)."""
    served = model(url, name, "embed", api_key)
    out = np.empty((len(texts), served["dims"]), dtype=np.float32)
    for start in range(0, len(texts), CHUNK):
        body = _request("POST", base_url(url), "/v1/embeddings", {
            "model": served["id"], "input": texts[start:start + CHUNK], "encoding_format": "base64",
            "normalize": normalize, "allow_empty": True}, api_key)
        for item in body["data"]:
            out[start + item["index"]] = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    return out


def rerank(url: str, name: str, query: str, passages: list[str], raw_scores: bool = True,
           api_key: str | None = None) -> np.ndarray:
    """Scores of ``passages`` against ``query``, in the order given (float32)."""
    served = model(url, name, "rerank", api_key)
    out = np.empty(len(passages), dtype=np.float32)
    for start in range(0, len(passages), CHUNK):
        ranked = _request("POST", base_url(url), "/rerank", {
            "model": served["id"], "query": query, "texts": passages[start:start + CHUNK],
            "raw_scores": raw_scores, "truncate": True, "allow_empty": True}, api_key)
        for item in ranked:
            out[start + item["index"]] = item["score"]
    return out


class RemoteEmbedder:
    """A server's embedding model, with the local embedding engine's calls."""

    def __init__(self, url: str, name: str, api_key: str | None) -> None:
        self.url, self.name, self.api_key = url, name, api_key

    @property
    def dims(self) -> int:
        return int(model(self.url, self.name, "embed", self.api_key)["dims"])

    def encode(self, texts: list[str], *, normalize: bool = True, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """Vectors for ``texts`` (any instruction already prepended), float32 (n, dims)."""
        return embed(self.url, self.name, list(texts), normalize=normalize, api_key=self.api_key)


class RemoteReranker:
    """A server's reranker, with the local rerank engine's calls."""

    def __init__(self, url: str, name: str, api_key: str | None) -> None:
        self.url, self.name, self.api_key = url, name, api_key

    def score(self, query: str, passages: list[str], *, normalize: bool = False, batch_size: int = 32,
              progress: bool = False) -> np.ndarray:
        """Scores of ``passages`` against ``query`` (raw logits, or their sigmoid with ``normalize``)."""
        return rerank(self.url, self.name, query, list(passages), raw_scores=not normalize, api_key=self.api_key)


def _request(method: str, url: str, path: str, payload: dict[str, Any] | None = None,
             api_key: str | None = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    delay = 0.2
    for attempt in range(ATTEMPTS):
        last = attempt == ATTEMPTS - 1
        try:
            response = _client(url).request(method, path, json=payload, headers=headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ConnectTimeout) as exc:
            if last:
                raise ConnectionError(f"cannot reach the lancedb-baai server at {url}: {exc}. Is "
                                      "`lancedb-baai serve` running there?") from exc
            time.sleep(delay)
        else:
            if response.status_code == 503 and not last:
                time.sleep(min(float(response.headers.get("retry-after", delay)), 5.0))
            elif response.status_code == 401:
                raise PermissionError(f"the server at {url} refused {method} {path} (401): {_message(response)}. "
                                      "Pass the function api_key= (to create(): \"$var:NAME\", after "
                                      "registry.set_var(NAME, key))")
            elif response.status_code >= 400:
                raise ValueError(f"the server at {url} refused {method} {path} "
                                 f"({response.status_code}): {_message(response)}")
            else:
                return response.json()
        delay *= 2
    raise AssertionError("unreachable")


def _message(response: Any) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def _client(url: str) -> Any:
    import httpx

    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = httpx.Client(base_url=url, timeout=TIMEOUT_S)
        return client


def _forget_after_fork() -> None:
    """A forked child must not share its parent's sockets: it opens its own connections."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
