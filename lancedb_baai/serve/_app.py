"""The FastAPI app: thin routes over :class:`~lancedb_baai.serve._service.Service`.

OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``, a text-embeddings-inference-shaped
``/rerank`` and ``/info``, Cohere-compatible ``/v1/rerank`` and ``/v2/rerank``, health,
readiness, Prometheus ``/metrics`` and bearer-token ``/admin/*``. With API keys configured,
every route but health, readiness and admin needs one. Every response carries
``X-Model-Version`` and ``X-Request-Id`` and is one access-log line; every refused request
gets a 4xx JSON body ``{"error": {"message", "type", "code"}}`` and changes nothing served.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..functions.inputs import check_query, check_texts
from ..engines import cache as _cache, kinds
from ..models import catalog as _catalog, hub as _hub
from .._version import __version__
from ._admin import Admin, load_error_kind
from ._batcher import Closed, Overloaded, TooLong
from ._logs import ACCESS_LOGGER, log_fields, request_id
from ._service import Service, ServeError, ServedModel
from ._settings import ADMIN_TOKEN_ENV, API_KEYS_ENV, ModelOptions, ServeConfig

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

OPEN_ROUTES = ("/healthz", "/readyz")
"""Routes that never need an API key (orchestrators probe them); /admin/* has its own token."""

RETRY_AFTER_S = 1


class EmbeddingRequest(BaseModel):
    input: Any = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "passage"
    normalize: bool = True
    dimensions: int | None = None
    user: str | None = None
    allow_empty: bool = False
    """Embed empty strings instead of refusing them (the package's ``url=`` functions send it: tables hold them)."""


class RerankRequest(BaseModel):
    query: Any = None
    texts: Any = None
    model: str | None = None
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = True
    allow_empty: bool = False
    """Score empty passages instead of refusing them (the package's ``url=`` functions send it)."""


class SwapRequest(BaseModel):
    model: str
    new_model: str
    kind: Literal["embed", "rerank"] | None = None
    allow_dims_change: bool = False


class RollbackRequest(BaseModel):
    model: str
    kind: Literal["embed", "rerank"] | None = None


class LoadRequest(BaseModel):
    """A model to start serving: ``model`` is its name or directory, ``alias`` the id to serve it under.

    Without ``kind``, the model's files say it (:func:`served_kind`).
    """

    kind: Literal["embed", "rerank"] | None = None
    model: str
    alias: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None
    batch_size: int | None = None

    def options(self, defaults: dict[str, Any]) -> ModelOptions:
        given = {k: v for k, v in self.model_dump(exclude={"kind", "model", "alias"}).items() if v is not None}
        kind = self.kind or served_kind(self.model, defaults.get("revision"))
        return ModelOptions(kind=kind, name=self.model, alias=self.alias, **{**defaults, **given})


def served_kind(name: str, revision: str | None = None) -> str:
    """How a model is served, read from its files or the catalog: "rerank" for a cross-encoder, else "embed".

    bge-m3 serves as an embedder (its dense vectors). A 4xx when the files are not here to say.
    """
    try:
        kind = _catalog.model_kind(name, revision)
    except (OSError, _hub.BrokenModelError) as exc:
        raise ServeError(400, f"load refused, nothing changed: {exc}", load_error_kind(exc),
                         {"model_path": name}) from exc
    if kind is None:
        raise ServeError(422, f"load refused, nothing changed: 'kind' was not sent and {name!r} is neither a "
                              "known bge model nor available locally, so its files cannot say what it is. "
                              "Send \"kind\": \"embed\" or \"rerank\"")
    return kinds.get(kind).group


class UnloadRequest(BaseModel):
    model: str


class CohereRerankRequest(BaseModel):
    """Cohere's rerank request (v1 and v2); fields this server has no use for are ignored."""

    model: str | None = None
    query: Any = None
    documents: Any = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = False


def create_app(config: ServeConfig | None = None, *, service: Service | None = None) -> FastAPI:
    """The ASGI app serving ``config``'s models; the models load here, before any worker forks.

    Pass ``service`` to reuse one already built (the gunicorn runner builds it in the master).
    """
    if service is None:
        if config is None:
            raise TypeError("create_app needs a ServeConfig (or a Service)")
        service = Service(config)
    config = service.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="lancedb_baai", lifespan=lifespan)
    app.state.service = service
    _add_middleware(app, service)
    _add_error_handlers(app)
    _add_data_routes(app, service, config)
    _add_state_routes(app, service, config)
    _add_cohere_routes(app, service, config)
    _add_admin_routes(app, service, config)
    return app


def _add_middleware(app: FastAPI, service: Service) -> None:
    keys = [key.encode() for key in service.config.api_keys]

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        request.state.request_id = request_id(request.headers.get("x-request-id"))
        refused = _check_api_key(request, keys)
        response = refused or await call_next(request)
        version = getattr(request.state, "model_version", None)
        response.headers["X-Model-Version"] = version or ", ".join(
            f"{m.id}={m.current.header()}" for m in service.models.values() if m.current)
        response.headers["X-Request-Id"] = request.state.request_id
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - start
        service.metrics.requests.labels(path, str(response.status_code)).inc()
        service.metrics.latency.labels(path).observe(seconds)
        log_fields(access_logger, logging.INFO, "request", method=request.method, route=path,
                   status=response.status_code, inputs=getattr(request.state, "inputs", 0),
                   tokens=getattr(request.state, "tokens", 0), ms=round(seconds * 1000, 2),
                   model_version=version, request_id=request.state.request_id)
        return response


def _check_api_key(request: Request, keys: list[bytes]) -> JSONResponse | None:
    """None when the request may go on; else the 401 that says what to send."""
    path = request.url.path
    if not keys or path in OPEN_ROUTES or path.startswith("/admin/"):
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "this server needs an API key: send 'Authorization: Bearer <key>' (the openai and "
                           "cohere clients send their api_key so)", "unauthorized",
                      {"WWW-Authenticate": "Bearer"})
    sent = token.strip().encode()
    matches = [hmac.compare_digest(sent, key) for key in keys]  # every key compared: no early exit
    if not any(matches):
        return _error(401, "the API key sent is not one this server accepts; ask its operator for one "
                           f"(--api-key or {API_KEYS_ENV})", "unauthorized", {"WWW-Authenticate": "Bearer"})
    return None


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None,
           detail: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, **(detail or {})}},
                        status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return _error(exc.status, exc.message, exc.kind, detail=exc.detail)

    @app.exception_handler(Closed)
    async def closed(request: Request, exc: Closed):
        return _error(404, str(exc), "model_not_found")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return _error(503, f"server busy: {exc}; retry after {RETRY_AFTER_S}s", "overloaded",
                      {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(TooLong)
    async def too_long(request: Request, exc: TooLong):
        return _error(413, str(exc), "input_too_long")

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):
        return _error(422, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}; see /v1/models, /v1/embeddings, /rerank" \
            if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message, "not_found" if exc.status_code == 404 else "http_error")


def _texts(value: Any, what: str, config: ServeConfig, allow_empty: bool = False) -> list[str]:
    """A request's texts as a list of strings within the limits, or the 4xx that says why not."""
    if value is None:
        raise ServeError(422, f"'{what}' is missing or null: send a string or a list of strings")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ServeError(422, f"'{what}' must be a string or a list of strings, got {type(value).__name__}")
    if not texts:
        raise ServeError(422, f"'{what}' is empty: send at least one text")
    if len(texts) > config.max_texts:
        raise ServeError(413, f"{len(texts)} texts in one request; the limit is {config.max_texts} "
                              "(max_texts): split the request", "request_too_large")
    check_texts(texts, what, advice="This server takes text only (no token ids): send strings.")
    for row, text in enumerate(texts):
        if not text and not allow_empty:  # refused as OpenAI and text-embeddings-inference refuse it
            where = f"'{what}' is" if isinstance(value, str) else f"{what} at row {row} is"
            raise ServeError(422, f"{where} an empty string: send text (drop or fill empty rows before "
                                  "sending)")
        if len(text) > config.max_chars:
            raise ServeError(413, f"{what} at row {row} has {len(text)} characters; the limit is "
                                  f"{config.max_chars} (max_chars): shorten it", "request_too_large")
    return texts


async def _run(service: Service, request: Request, model: ServedModel, texts: list[str],
               **job: Any) -> tuple[np.ndarray, int]:
    future, current = service.submit(model, texts, **job)
    request.state.model_version = current.header()
    request.state.inputs = len(texts)
    out, tokens = await asyncio.wrap_future(future)
    request.state.tokens = tokens
    return out, tokens


def _add_data_routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        model = service.model(body.model, "embed")
        texts = _texts(body.input, "input", config, body.allow_empty)
        current = model.current
        if body.dimensions is not None and body.dimensions != current.engine.dims:
            raise ServeError(422, f"dimensions={body.dimensions} but {model.id!r} makes "
                                  f"{current.engine.dims}-d vectors; omit dimensions or send {current.engine.dims}")
        if body.input_type == "query":
            for text in texts:
                if not text.strip():
                    raise ServeError(422, "a query is empty: send the text to search for")
            texts = [current.fn.instruction() + t for t in texts]
        vectors, tokens = await _run(service, request, model, texts, normalize=body.normalize)
        encode = _base64 if body.encoding_format == "base64" else np.ndarray.tolist
        return {"object": "list", "model": model.id,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/rerank")
    async def rerank(body: RerankRequest, request: Request) -> list[dict[str, Any]]:
        model = service.model(body.model, "rerank")
        query = check_query(body.query)
        texts = _texts(body.texts, "texts", config, body.allow_empty)
        scores, _ = await _run(service, request, model, texts, query=query,
                               normalize=not body.raw_scores, truncate=body.truncate)
        order = np.argsort(-scores, kind="stable")
        return [{"index": int(i), "score": float(scores[i]), **({"text": texts[i]} if body.return_text else {})}
                for i in order]


def _add_state_routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    """What is served and how it is doing: models, health, readiness, metrics and TEI's ``/info``."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": r["id"], "object": "model", "owned_by": "lancedb_baai", "created": 0, **r}
            for r in (m.record() for m in service.models.values())]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return _error(503, "models are loading", "not_ready")
        return JSONResponse({"status": "ready", "models": [m.id for m in service.models.values()]})

    @app.get("/metrics")
    async def metrics() -> Response:
        service.metrics.observe_weights(_cache.CACHE.info())
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"version": __version__, "models": [m.info() for m in service.models.values()],
                "max_client_batch_size": config.max_texts, "max_input_chars": config.max_chars,
                "max_batch_tokens": config.max_batch_tokens, "max_concurrent_requests": config.max_queue,
                "micro_batching": config.micro_batching}


def _documents(value: Any, config: ServeConfig) -> list[str]:
    """Cohere's ``documents``: strings, or objects whose ``text`` is the string."""
    if isinstance(value, list):
        for row, doc in enumerate(value):
            if isinstance(doc, dict) and not isinstance(doc.get("text"), str):
                raise ServeError(422, f"document at row {row} is an object without a string 'text' field; "
                                      "send strings or {\"text\": \"...\"} objects")
        value = [doc["text"] if isinstance(doc, dict) else doc for doc in value]
    return _texts(value, "documents", config)


def _add_cohere_routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    async def rerank(body: CohereRerankRequest, request: Request, api_version: str) -> dict[str, Any]:
        model = service.model(body.model, "rerank")
        query = check_query(body.query)
        texts = _documents(body.documents, config)
        scores, tokens = await _run(service, request, model, texts, query=query, normalize=True)
        order = np.argsort(-scores, kind="stable")[:body.top_n]
        results = [{"index": int(i), "relevance_score": float(scores[i]),
                    **({"document": {"text": texts[i]}} if body.return_documents else {})} for i in order]
        return {"id": request.state.request_id, "results": results,
                "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1},
                         "tokens": {"input_tokens": tokens, "output_tokens": 0}}}

    @app.post("/v1/rerank")
    async def rerank_v1(body: CohereRerankRequest, request: Request) -> dict[str, Any]:
        return await rerank(body, request, "1")

    @app.post("/v2/rerank")
    async def rerank_v2(body: CohereRerankRequest, request: Request) -> dict[str, Any]:
        return await rerank(body, request, "2")


def _base64(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _admin_guard(config: ServeConfig):
    def check(request: Request) -> None:
        if config.admin_token is None:
            raise ServeError(403, f"admin routes are off: start the server with {ADMIN_TOKEN_ENV} set",
                             "admin_disabled")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServeError(401, "admin routes need 'Authorization: Bearer <token>'", "unauthorized")
        if not hmac.compare_digest(token.encode(), config.admin_token.encode()):
            raise ServeError(403, "wrong admin token", "forbidden")

    return check


def _add_admin_routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    guard = [Depends(_admin_guard(config))]
    admin = Admin(service)
    defaults = config.load_defaults

    @app.post("/admin/swap", dependencies=guard)
    def swap(body: SwapRequest) -> dict[str, Any]:
        return _admin(service, "swap", body.model,
                      lambda: admin.swap(body.model, body.kind, body.new_model, body.allow_dims_change))

    @app.post("/admin/rollback", dependencies=guard)
    def rollback(body: RollbackRequest) -> dict[str, Any]:
        return _admin(service, "rollback", body.model, lambda: admin.rollback(body.model, body.kind))

    @app.post("/admin/load", dependencies=guard)
    def load(body: LoadRequest) -> dict[str, Any]:
        return _admin(service, "load", body.alias or body.model, lambda: admin.load(_load_options(body, defaults)))

    @app.post("/admin/unload", dependencies=guard)
    def unload(body: UnloadRequest) -> dict[str, Any]:
        return _admin(service, "unload", body.model, lambda: admin.unload(body.model))

    @app.get("/admin/engines", dependencies=guard)
    def engines() -> dict[str, Any]:
        return {**service.engines(), "memory": admin.memory()}


def _load_options(body: LoadRequest, defaults: dict[str, Any]) -> ModelOptions:
    try:
        return body.options(defaults)
    except ValueError as exc:
        raise ServeError(422, f"load refused, nothing changed: {exc}") from exc


def _admin(service: Service, action: str, model: str, run) -> dict[str, Any]:
    """Run one admin action: one INFO line (action, model, result, seconds) and one counted result."""
    start = time.perf_counter()
    result, detail = "ok", None
    try:
        record = run()
        detail = f"{record.get('previous')} -> {record.get('served')}" if action != "unload" else None
        return record
    except ServeError as exc:
        result, detail = exc.kind, exc.message
        raise
    except Exception as exc:
        result, detail = "error", repr(exc)
        raise
    finally:
        service.metrics.admin.labels(action, result).inc()
        log_fields(logger, logging.INFO, "admin", action=action, model=model, result=result,
                   seconds=round(time.perf_counter() - start, 3), generation=service.generation, detail=detail)
