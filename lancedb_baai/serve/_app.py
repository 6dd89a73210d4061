"""The FastAPI app: thin routes over :class:`~lancedb_baai.serve._service.Service`.

OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``, a text-embeddings-inference-shaped
``/rerank``, health, readiness, Prometheus ``/metrics`` and bearer-token ``/admin/*``.
Every response carries ``X-Model-Version``; every refused request gets a 4xx JSON body
``{"error": {"message", "type"}}`` and changes nothing served.
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
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._inputs import check_query, check_texts
from ._batcher import Overloaded, TooLong
from ._service import Service, ServeError, ServedModel
from ._settings import ADMIN_TOKEN_ENV, ServeConfig

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class EmbeddingRequest(BaseModel):
    input: Any = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "passage"
    normalize: bool = True
    dimensions: int | None = None
    user: str | None = None


class RerankRequest(BaseModel):
    query: Any = None
    texts: Any = None
    model: str | None = None
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = True


class SwapRequest(BaseModel):
    model: str
    new_model: str
    kind: Literal["embed", "rerank"] | None = None
    allow_dims_change: bool = False


class RollbackRequest(BaseModel):
    model: str
    kind: Literal["embed", "rerank"] | None = None


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
    _add_admin_routes(app, service, config)
    return app


def _add_middleware(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        version = getattr(request.state, "model_version", None)
        response.headers["X-Model-Version"] = version or ", ".join(
            f"{m.id}={m.current.header()}" for m in service.models.values() if m.current)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(path, str(response.status_code)).inc()
        service.metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return _error(exc.status, exc.message, exc.kind)

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


def _texts(value: Any, what: str, config: ServeConfig) -> list[str]:
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
        if len(text) > config.max_chars:
            raise ServeError(413, f"{what} at row {row} has {len(text)} characters; the limit is "
                                  f"{config.max_chars} (max_chars): shorten it", "request_too_large")
    return texts


async def _run(service: Service, request: Request, model: ServedModel, texts: list[str],
               **job: Any) -> tuple[np.ndarray, int]:
    future, current = service.submit(model, texts, **job)
    request.state.model_version = current.header()
    return await asyncio.wrap_future(future)


def _add_data_routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        model = service.model(body.model, "embed")
        texts = _texts(body.input, "input", config)
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
        texts = _texts(body.texts, "texts", config)
        scores, _ = await _run(service, request, model, texts, query=query,
                               normalize=not body.raw_scores, truncate=body.truncate)
        order = np.argsort(-scores, kind="stable")
        return [{"index": int(i), "score": float(scores[i]), **({"text": texts[i]} if body.return_text else {})}
                for i in order]

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
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)


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

    @app.post("/admin/swap", dependencies=guard)
    def swap(body: SwapRequest) -> dict[str, Any]:
        return _admin(service, "swap", lambda: service.swap(body.model, body.kind, body.new_model,
                                                             body.allow_dims_change))

    @app.post("/admin/rollback", dependencies=guard)
    def rollback(body: RollbackRequest) -> dict[str, Any]:
        return _admin(service, "rollback", lambda: service.rollback(body.model, body.kind))

    @app.get("/admin/engines", dependencies=guard)
    def engines() -> dict[str, Any]:
        return service.engines()


def _admin(service: Service, action: str, run) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        record = run()
    except ServeError as exc:
        service.metrics.admin.labels(action, "refused").inc()
        logger.warning("admin %s refused in %.2fs: %s", action, time.perf_counter() - start, exc.message)
        raise
    service.metrics.admin.labels(action, "ok").inc()
    return record
