"""Real `lancedb-baai serve` processes for the serving tests: start on a free loopback port, wait, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
START_TIMEOUT = 120
TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess; ``args`` are the options of ``lancedb-baai serve`` after host and port."""

    def __init__(self, args: list[str], log: Path, token: str | None = TOKEN) -> None:
        self.args, self.log_path, self.token = [str(a) for a in args], Path(log), token
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("LANCEDB_BAAI_ADMIN_TOKEN", None)
        if self.token:
            env["LANCEDB_BAAI_ADMIN_TOKEN"] = self.token
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "lancedb_baai", "serve", "--host", HOST,
                                      "--port", str(self.port), *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after {START_TIMEOUT}s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drain, release), then SIGKILL if it has not exited in ``timeout``; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, json=None, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=json, timeout=60, **kwargs)

    def engines(self) -> dict:
        response = self.get("/admin/engines", headers=self.admin())
        assert response.status_code == 200, response.text
        return response.json()


def wait_for(check, timeout: float = 60, interval: float = 0.2):
    """Poll ``check()`` until it returns something truthy (bounded in time); return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s; last: {value!r}")
        time.sleep(interval)
