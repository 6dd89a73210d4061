"""Running a server: uvicorn in this process for one worker, gunicorn with preloaded models for several."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..engines.choice import WORKERS_ENV
from ..runtimes.device import THREADS_ENV
from ..runtimes.streams import throughput_by_default
from ._metrics import MULTIPROC_ENV, worker_exited
from ._settings import ServeConfig

logger = logging.getLogger(__name__)


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or SIGINT; both drain the requests in flight, then release the engines."""
    from ._logs import configure

    configure(config.log_format, config.log_level)
    throughput_by_default()  # concurrent requests: two OpenVINO streams stand a loaded host better than one
    if config.workers == 1:
        _run_uvicorn(config)
    else:
        _run_gunicorn(config)


def _run_uvicorn(config: ServeConfig) -> None:
    import uvicorn

    from ._app import create_app
    from ._logs import uvicorn_log_config

    if config.threads is not None:
        set_threads(config.threads)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=30, access_log=False,
                log_config=uvicorn_log_config(config.log_format, config.log_level))


def _run_gunicorn(config: ServeConfig) -> None:
    """gunicorn with the app (and so the models) built in the master, before the workers fork.

    The workers share the master's CPU weights copy-on-write (0 loads per worker) and hear
    about swaps through the state directory, which is a fresh temporary one when none is
    given (swaps then reach every worker but do not outlive the server). Metrics use
    prometheus-client's multiprocess mode in ``<state_dir>/prometheus``.
    """
    if sys.platform == "win32":
        raise RuntimeError("--workers N > 1 runs gunicorn, which needs a Unix; on Windows serve one worker")
    from gunicorn.app.base import BaseApplication

    state_dir = config.state_dir or tempfile.mkdtemp(prefix="lancedb-baai-state-")
    config = config.model_copy(update={"state_dir": state_dir})
    metrics_dir = Path(state_dir) / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)  # before anything imports prometheus-client
    threads = config.threads_per_worker()
    set_threads(1)  # no OpenMP pool in the master: a forked child could not use it
    os.environ.setdefault(WORKERS_ENV, str(config.workers))  # "auto" picks a backend whose weights the workers share

    from ._app import create_app
    from ._service import Service

    app = create_app(service=Service(config))

    def post_fork(server: Any, worker: Any) -> None:
        set_threads(threads)

    def child_exit(server: Any, worker: Any) -> None:
        worker_exited(worker.pid)

    class Application(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": _bind(config.host, config.port), "workers": config.workers,
                       "worker_class": "uvicorn_worker.UvicornWorker", "preload_app": True,
                       "graceful_timeout": 30, "timeout": 120, "loglevel": config.log_level,
                       "post_fork": post_fork, "child_exit": child_exit}
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    logger.info("gunicorn: %d workers x %d torch threads, state in %s", config.workers, threads, state_dir)
    Application().run()


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def set_threads(threads: int) -> None:
    """Threads per inference: torch's, and those an ONNX Runtime / OpenVINO engine compiles with.

    torch is only imported if the process has it already (a torch-free server stays so);
    one imported later starts with OMP_NUM_THREADS.
    """
    os.environ[THREADS_ENV] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        torch.set_num_threads(threads)
