"""A local Ray head with its job server, bound to 127.0.0.1, owned by one process.

``curate serve`` starts one when ``RAY_ADDRESS`` is unset and stops it on shutdown.
The head runs as ``ray start --head --block``, a child process in a session of its own
(a Ctrl-C meant for the owner does not reach it; the owner stops it): ``stop()``
terminates that process, whose SIGTERM handler stops the Ray processes it started,
and kills its process group if it does not exit in time. Only then, as a fallback,
are the head's remaining descendants and any process still holding a file under its
private temp dir (``head_processes``) stopped. ``ray stop`` would kill every Ray
cluster on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
# The head's own environment only: on SIGTERM, `ray start --block` first drains the node
# (up to 30 s by default, for Ray Serve traffic); a local head has nothing to drain.
_HEAD_ONLY_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
# The head shares the machine with the API that started it: its daemons and the jobs'
# drivers yield the CPU to the API's requests (Ray's task workers are at +15 anyway).
HEAD_NICENESS = 5
_PROCESS_ERRORS = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


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


def auth_token() -> str:
    """The token a local head is started with: ``$RAY_AUTH_TOKEN``, else the one Ray keeps
    in ``~/.ray/auth_token``, else a new random one. ``ray start`` does not create a token
    (``ray.init`` does), so on a fresh machine a head without one refuses every client."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    saved = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with contextlib.suppress(OSError):
        if token := saved.read_text().strip():
            return token
    return secrets.token_hex(32)


def head_processes(temp_dir: str | Path) -> list[psutil.Process]:
    """Live processes (not this one) whose command line mentions ``temp_dir`` or that
    hold an open file under it: a head's processes, found by its private temp dir. Ray
    renames some of its processes (``ray::DashboardAgent``), so the command line alone
    misses them; they all keep log files open in the head's temp dir. ``temp_dir`` may
    be a prefix (``/tmp/curate-ray-`` finds every curate head)."""
    marker = str(temp_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            hit = marker in " ".join(proc.info["cmdline"] or ()) or any(
                f.path.startswith(marker) for f in proc.open_files())
            if hit and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except _PROCESS_ERRORS:
            continue
    return found


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except _PROCESS_ERRORS:
        return []


def _end(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` for whatever is still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = []
        for proc in procs:
            with contextlib.suppress(*_PROCESS_ERRORS):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.send_signal(sig)
                    live.append(proc)
        procs = psutil.wait_procs(live, timeout=timeout)[1]
        if not procs:
            return


class LocalRayHead:
    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus
        # A short path: Ray puts Unix sockets under it (limit ~107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="curate-ray-"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.temp_dir / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180.0) -> LocalRayHead:
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if nice := shutil.which("nice"):
            cmd = [nice, "-n", str(HEAD_NICENESS), *cmd]
        # This process (the service, its Ray job clients) and everything the head starts
        # (the drivers of jobs) share the token through the environment.
        os.environ["RAY_AUTH_TOKEN"] = auth_token()
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, env={**ray_env(), **_HEAD_ONLY_ENV}, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_for_job_server(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def wait_for_job_server(self, timeout: float = 60.0) -> None:
        """The head is up once its job agent takes a job (a few seconds after the GCS)."""
        os.environ.update(LOOPBACK_ENV)  # before Ray reads its auth mode
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RayHeadError(f"ray start exited with {self.proc.returncode}:\n{self._log_tail()}")
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
        raise RayHeadError(f"Ray job server at {self.jobs_url} not ready after {timeout:.0f} s: {last}\n"
                           f"{self._log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate ``ray start --block`` and wait up to ``timeout`` s for it to stop the
        head; then kill its process group. Leftovers (descendants that left the group,
        processes holding files in the temp dir) are ended last."""
        proc, self.proc = self.proc, None
        tree = []
        if proc is not None:
            tree = _descendants(proc.pid)  # before they are orphaned and re-parented
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.kill()
                    proc.wait()
        leftovers = {p.pid: p for p in tree if p.is_running()} | {p.pid: p for p in head_processes(self.temp_dir)}
        _end(list(leftovers.values()))
        shutil.rmtree(self.temp_dir, ignore_errors=True)
