"""``lancedb-baai serve``: the package's models over HTTP, shared by every process that calls them.

Importing this package imports neither FastAPI nor torch: :func:`create_app` and :func:`run`
import them when called, and :mod:`lancedb_baai.serve.client` (what ``url=`` functions use)
needs only httpx. Install the server with ``pip install 'lancedb_baai[serve]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._settings import ADMIN_TOKEN_ENV, API_KEYS_ENV, ModelOptions, ServeConfig, parse_size

if TYPE_CHECKING:
    from fastapi import FastAPI


def _need_extra() -> None:
    """Fail early, naming the extra; found, not imported (prometheus-client must not be imported
    before the gunicorn runner chooses its multiprocess mode)."""
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None]
    if missing:
        raise ImportError(f"serving needs the 'serve' extra ({', '.join(missing)} missing): "
                          "pip install 'lancedb_baai[serve]'")


def create_app(config: ServeConfig, **kwargs: Any) -> FastAPI:
    """The ASGI app serving ``config``'s models (loaded now, before any worker forks)."""
    _need_extra()
    from ._app import create_app as build

    return build(config, **kwargs)


def run(config: ServeConfig) -> None:
    """Serve ``config`` until SIGTERM/SIGINT: uvicorn for one worker, gunicorn for several."""
    _need_extra()
    from ._run import run as serve

    serve(config)


__all__ = ["ADMIN_TOKEN_ENV", "API_KEYS_ENV", "ModelOptions", "ServeConfig", "create_app", "parse_size", "run"]
