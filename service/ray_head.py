"""A local Ray head with its job server, bound to 127.0.0.1, owned by one process.

``curate serve`` starts one when ``RAY_ADDRESS`` is unset and stops it on shutdown.
Only this head's processes are stopped (found by its private temp dir): ``ray stop``
would kill every Ray cluster on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


class RayHeadError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LOOPBACK_ENV)
    env.pop("RAY_ADDRESS", None)
    return env


class LocalRayHead:
    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus
        # A short path: Ray puts Unix sockets under it (limit ~107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="curate-ray-"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> LocalRayHead:
        cmd = [
            shutil.which("ray") or "ray", "start", "--head", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        proc = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            self.stop()
            raise RayHeadError(f"ray start failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        try:
            self.wait_for_job_server()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_job_server(self, timeout: float = 60.0) -> None:
        """The job agent registers a few seconds after `ray start` returns."""
        os.environ.update(LOOPBACK_ENV)  # before Ray reads its auth mode
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = JobSubmissionClient(self.jobs_url)
                sid = client.submit_job(entrypoint="true", submission_id=f"curate-probe-{time.time_ns()}")
                while not client.get_job_status(sid).is_terminal():
                    time.sleep(0.1)
                client.delete_job(sid)
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
                last = exc
                time.sleep(0.5)
        raise RayHeadError(f"Ray job server at {self.jobs_url} not ready after {timeout:.0f} s: {last}")

    def stop(self) -> None:
        pids = _pids_with(str(self.temp_dir))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (pids := _pids_with(str(self.temp_dir))):
                time.sleep(0.1)
            if not pids:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` or that hold a file under it.
    Ray renames some of its processes (``ray::DashboardAgent``), so the command line
    alone misses them; they all keep log files open in the head's temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            hit = marker in cmdline or any(marker in os.readlink(fd) for fd in (entry / "fd").iterdir())
        except OSError:
            continue
        if hit:
            pids.append(int(entry.name))
    return pids
