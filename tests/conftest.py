"""Shared fixtures: one real local Ray cluster per test session (bound to 127.0.0.1),
a fresh catalog home per test, and helpers for inline shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Before anything imports Ray: loopback only, and token auth (what `ray start` enables).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
# A 1→N transform defined by the tests, registered the way a user registers a stage of
# their own; set before the registry is imported and before the Ray head starts, so
# every process of a job (CLI, service, Ray workers and job drivers) knows it.
TEST_STAGES = Path(__file__).resolve().parent / "stages"
os.environ["CURATE_STAGES"] = (f"{TEST_STAGES / 'split_stage.py'}:SplitParagraphsTestV1,"
                               f"{TEST_STAGES / 'calibrated_stage.py'}:CalibratedLengthTestV1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEB_POOL = SHARED_DATA / "web" / "combined_web_pool.parquet"


def needs_shared(path: Path):
    reason = f"shared test data absent: {path} (see ../shared/data/README.md)"
    return pytest.mark.skipif(not path.exists(), reason=reason)


@pytest.fixture(scope="session")
def ray_head():
    """One real local Ray head with its job server for the whole session (loopback only).
    In-process drivers and subprocess drivers (CLI, Ray jobs) all run on it."""
    from service.ray_head import LOOPBACK_ENV, LocalRayHead

    head = LocalRayHead(num_cpus=2).start()
    os.environ.update(LOOPBACK_ENV)
    os.environ["RAY_ADDRESS"] = head.address
    yield head
    import ray

    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    head.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process connected to the session's Ray head as a driver."""
    import ray

    from workers.passes import connect_ray

    connect_ray()
    return ray


@pytest.fixture(autouse=True)
def curate_home(tmp_path, monkeypatch):
    home = tmp_path / "curate-home"
    monkeypatch.setenv("CURATE_HOME", str(home))
    return home


def write_shard(path: Path, texts: list, ids: list | None = None, **extra) -> Path:
    columns = {"text": pa.array(texts, pa.string())}
    if ids is not None:
        columns = {"id": pa.array(ids, pa.string()), **columns}
    columns.update({k: pa.array(v) for k, v in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


GOOD = (
    "The history of the city is long and varied, and many of its buildings still stand today. "
    "Visitors come to see the old bridge that was built with stone from the nearby hills, and they "
    "often stay to walk along the river. The local museum has a collection of maps that show how "
    "the streets have changed over the centuries, and it is open to the public every day of the week."
)


def run_cli(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    """`curate ...` as a user runs it: a real subprocess with this session's environment."""
    proc = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def wait_for_job(base: str, auth: dict, job_id: str, seconds: float = 300) -> dict:
    """Poll a real service until the job ends (succeeded or failed); its last view."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        job = httpx.get(f"{base}/jobs/{job_id}", headers=auth, timeout=30).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['state']} after {seconds:.0f} s")


def send_json(handler, status: int, body: object, headers: dict | None = None) -> None:
    """A JSON answer from an ``http.server`` handler (the fake endpoints of the tests)."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in {**(headers or {}), "Content-Type": "application/json",
                        "Content-Length": str(len(data))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
