"""Start `curate serve` as a separate process and wait until it is ready.

Used by the end-to-end tests and the API benchmark; also handy for scripts that need
a throwaway local service. The first start prints an admin key, which is read from
the server's log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.ray_head import free_port


class ServerError(RuntimeError):
    pass


class LocalServer:
    def __init__(self, home: Path, data_roots: Path, *, env: dict[str, str] | None = None,
                 unset: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log or home.parent / "serve.log"
        self.env = {**os.environ, "CURATE_HOME": str(home), "CURATE_DATA_ROOTS": str(data_roots),
                    "CURATE_PORT": str(self.port), **(env or {})}
        for key in unset:
            self.env.pop(key, None)
        self.proc: subprocess.Popen | None = None
        self.auth: dict[str, str] = {}

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, timeout: float = 120) -> LocalServer:
        log = open(self.log_path, "w+")  # noqa: SIM115 - the server writes to it for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"curate serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            self.stop()
            raise ServerError(f"curate serve not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")
        key = re.search(r"(curate_[\w-]+)", self.log())
        self.auth = {"Authorization": f"Bearer {key.group(1)}"} if key else {}
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # graceful: lifespan stops the Ray head it started
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
