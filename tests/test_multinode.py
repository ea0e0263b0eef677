"""A real two-node Ray cluster on this one machine: two Linux network namespaces joined by
a veth pair (private test addresses; the machine's own interfaces are never touched),
`ray start --head` in one, `ray start --address=…` in the other, and `curate serve` in the
head's namespace. A job on the demo's corpus submitted to it must run tasks on both nodes
and give exactly the outputs and lineage of a single-node run of the same spec: the demo's
cheap stages plus its perplexity stage by default, the whole `curate demo` in the slow tier.

Skipped, with the reason, where network namespaces cannot be made (not root, no `ip`,
`ip netns add` refused). Everything started here runs inside the two namespaces, so
teardown ends exactly those processes (`ip netns pids`) and deletes the namespaces, even
when the test fails; namespaces left by a run that was killed outright are removed by the
next one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import run_cli

from service.ray_head import head_processes

REPO = Path(__file__).resolve().parents[1]
HEAD_IP, WORKER_IP = "10.231.0.1", "10.231.0.2"  # private, and only inside the two namespaces
# Each namespace has its own network stack: fixed ports cannot clash with anything else.
GCS_PORT, DASHBOARD_PORT, SERVE_PORT = 6379, 8265, 8000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _netns_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


def _sweep_leftovers() -> None:
    """Delete the namespaces (and end their processes) of earlier runs of this test whose
    pytest process is gone, e.g. killed with SIGKILL before its teardown ran."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(r"(curate-(\d+)-[0-9a-f]{4}-[hw])\b", line)
        if match and not psutil.pid_exists(int(match.group(2))):
            _end([int(p) for p in _ip("netns", "pids", match.group(1), check=False).stdout.split()])
            _ip("netns", "del", match.group(1), check=False)


def _end(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL for whatever is still alive after ``timeout``."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        procs = psutil.wait_procs(procs, timeout=timeout)[1]
        if not procs:
            return


class TwoNodeCluster:
    """Two namespaces, a Ray head in one and a Ray worker node in the other, one CPU each
    (the scheduler must use both for two tasks at once). All Ray processes, the service
    and the drivers of its jobs share one auth token through the environment."""

    def __init__(self, root: Path) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(2)}"  # unique: parallel and leftover runs do not clash
        self.head_ns, self.worker_ns = f"curate-{tag}-h", f"curate-{tag}-w"
        self.root = root  # short: Ray puts Unix sockets under each node's temp dir (~107 characters)
        self.address = f"{HEAD_IP}:{GCS_PORT}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # Multi-node: each node on its namespace address, not the loopback-only recipe.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # nothing to drain on `ray start --block` exit
            # Job drivers run with the head's PATH; `python` there must be this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        self.env = env

    # -- network -----------------------------------------------------------------------
    def create_network(self) -> None:
        for ns in (self.head_ns, self.worker_ns):
            res = _ip("netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"network namespaces not permitted here: `ip netns add` failed: {res.stderr.strip()}")
            self.namespaces.append(ns)
        # Both ends are created inside the namespaces: nothing appears in the host's own.
        res = _ip("-n", self.head_ns, "link", "add", "veth-h", "type", "veth", "peer", "name", "veth-w",
                  "netns", self.worker_ns, check=False)
        if res.returncode != 0:
            pytest.skip(f"cannot join network namespaces here: `ip link add … type veth` failed: {res.stderr.strip()}")
        for ns, dev, ip in ((self.head_ns, "veth-h", HEAD_IP), (self.worker_ns, "veth-w", WORKER_IP)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    # -- processes ---------------------------------------------------------------------
    # In the checkout, as the other tests start the service and Ray heads: `python -m
    # service.cli` and the drivers' `python -m workers.job_entrypoint` import from there.
    def popen(self, ns: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], env={**self.env, **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=REPO)
        self.procs.append(proc)
        return proc

    def python(self, ns: str, code: str, *args: str, timeout: float = 180) -> dict:
        """Run ``code`` in ``ns`` (reaches the namespace's addresses); its stdout is JSON."""
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], env=self.env,
                             capture_output=True, text=True, timeout=timeout, cwd=self.root)
        assert res.returncode == 0, f"{res.stderr[-3000:]}\n{self.logs()}"
        return json.loads(res.stdout)

    def start_ray(self) -> None:
        ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1", "--num-gpus=0",
               "--object-store-memory=200000000", "--disable-usage-stats"]
        self.popen(self.head_ns, [*ray, "--head", f"--node-ip-address={HEAD_IP}", f"--port={GCS_PORT}",
                                  "--include-dashboard=true", f"--dashboard-host={HEAD_IP}",
                                  f"--dashboard-port={DASHBOARD_PORT}", f"--temp-dir={self.root / 'h'}"],
                   self.root / "ray-head.log")
        self.popen(self.worker_ns, [*ray, f"--address={self.address}", f"--node-ip-address={WORKER_IP}",
                                    f"--temp-dir={self.root / 'w'}"], self.root / "ray-worker.log")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def namespace_pids(self) -> list[int]:
        pids = []
        for ns in self.namespaces:
            res = _ip("netns", "pids", ns, check=False)
            pids += [int(p) for p in res.stdout.split()]
        return pids

    # -- teardown ----------------------------------------------------------------------
    def stop(self) -> None:
        """Every step runs whatever the one before it did: stop the service and `ray start
        --block` (SIGTERM stops the Ray processes each started), kill their process groups,
        end whatever is left in the namespaces or holds a file under the temp dirs, delete
        the namespaces (and with them the veth pair)."""
        for proc in reversed(self.procs):  # serve, then the worker node, then the head
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT if "serve" in proc.args else signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _end([p for p in self.namespace_pids() if p != os.getpid()])
        _end([p.pid for p in head_processes(self.root)])
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def two_nodes():
    if reason := _netns_unavailable():
        pytest.skip(reason)
    _sweep_leftovers()
    root = Path(tempfile.mkdtemp(prefix="cmn-"))
    cluster = TwoNodeCluster(root)
    try:
        cluster.create_network()
        cluster.start_ray()
        yield cluster
    finally:
        cluster.stop()
        leaks = cluster.namespace_pids()
        shutil.rmtree(root, ignore_errors=True)
        assert not leaks, f"processes left in the test namespaces: {leaks}"


WAIT_FOR_NODES = """
import json, sys, time
from ray.util.state import list_nodes
deadline = time.monotonic() + 150
while True:
    try:
        alive = [n for n in list_nodes(address=sys.argv[1]) if n.state == "ALIVE"]
    except Exception as exc:
        alive, error = [], exc
    if len(alive) == 2:
        break
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} of 2 Ray nodes alive after 150 s: {alive or error}")
    time.sleep(1)
print(json.dumps({n.node_ip: n.node_id for n in alive}))
"""

RUN_JOB = """
import json, pathlib, re, sys, time
import httpx
base, log, spec = sys.argv[1], pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
deadline = time.monotonic() + 150
while True:
    try:
        if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("curate serve not ready after 150 s")
    time.sleep(0.5)
auth = {"Authorization": "Bearer " + re.search(r"(curate_[\\w-]+)", log.read_text()).group(1)}
resp = httpx.post(f"{base}/jobs", json=spec, headers=auth, timeout=60)
assert resp.status_code == 201, resp.text
job_id = resp.json()["job_id"]
deadline = time.monotonic() + 480
while time.monotonic() < deadline:
    job = httpx.get(f"{base}/jobs/{job_id}", headers=auth, timeout=30).json()
    if job["state"] in ("succeeded", "failed", "cancelled"):
        break
    time.sleep(1)
print(json.dumps(job))
"""

TASKS = """
import json, sys
from ray.util.state import list_tasks
tasks = list_tasks(address=sys.argv[1], limit=10_000, raise_on_missing_output=False)
print(json.dumps([{"name": t.name, "node_id": t.node_id, "state": str(t.state)} for t in tasks]))
"""


def lineage(out: Path) -> list[tuple]:
    import duckdb

    return duckdb.sql(f"SELECT stage, shard, doc_id, decision, reason, change, survivor_id "
                      f"FROM read_parquet('{out}/stages/*/decisions/*.parquet') ORDER BY ALL").fetchall()


# The demo's corpus (in shards small enough to be several work units each run, more than
# the cluster's two CPUs run at once), with its cheap stages and its perplexity stage (a
# model on an actor pool, one actor per node); the whole `curate demo` (DBP and PreSelect
# too, on 400 docs) is the slow tier.
SHORT_STAGES = [
    {"stage": "exact_dedup_v1"}, {"stage": "minhash_dedup_v1"},
    {"stage": "c4_lines_v1", "params": {"min_sentences": 3}}, {"stage": "quality_rules_v1"},
    {"stage": "perplexity_v1", "params": {"window": 64, "score": "bits_per_byte", "select": {
        "mode": "buckets", "percentiles": [50, 90], "keep": ["head", "middle"]}}},
]


def single_node_reference(variant: str, demo: Path) -> tuple[Path, dict]:
    """The job on the session's one-node local head, which has the same 2 CPUs as the two
    nodes together, so the job plans the same work units. Its output folder and spec."""
    if variant == "demo":  # `curate demo` itself: corpus, shards, spec and run
        run_cli("demo", "--out", str(demo), "--max-docs", "400", "--shard-rows", "100", "--no-progress")
        return demo / "run", yaml.safe_load((demo / "demo.yaml").read_text())
    from workers.demo_corpus import build_demo_corpus
    from workers.ingest import ingest

    raw, _ = build_demo_corpus(demo / "raw" / "demo.jsonl", max_docs=200)
    ingest([str(raw)], demo / "shards", shard_rows=50)
    spec = {"name": "demo-short", "inputs": [str(demo / "shards" / "*.parquet")], "output": str(demo / "run"),
            "stages": SHORT_STAGES}
    (demo / "short.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run_cli("run", str(demo / "short.yaml"), "--no-progress")
    return demo / "run", spec


@pytest.mark.parametrize("variant", ["short", pytest.param("demo", marks=pytest.mark.slow)])
def test_a_job_on_two_ray_nodes_runs_on_both_and_equals_a_single_node_run(two_nodes, request, tmp_path, variant):
    cluster = two_nodes
    request.getfixturevalue("ray_head")  # after the namespaces: a skip starts no local head
    demo = tmp_path / "demo"
    started = time.monotonic()
    reference, spec = single_node_reference(variant, demo)  # while the two nodes start
    print(f"\n{variant}: single-node run {time.monotonic() - started:.0f} s")

    nodes = cluster.python(cluster.head_ns, WAIT_FOR_NODES, cluster.address)
    assert set(nodes) == {HEAD_IP, WORKER_IP}, nodes

    outputs = tmp_path / "outputs"
    serve_log = cluster.root / "serve.log"
    cluster.popen(cluster.head_ns, [sys.executable, "-m", "service.cli", "serve"], serve_log, env={
        "RAY_ADDRESS": cluster.address, "CURATE_RAY_JOBS_URL": f"http://{HEAD_IP}:{DASHBOARD_PORT}",
        "CURATE_DRIVER_PYTHON": sys.executable, "CURATE_HOME": str(tmp_path / "serve-home"),
        "CURATE_DATA_ROOTS": str(demo), "CURATE_OUTPUT_ROOT": str(outputs), "CURATE_PORT": str(SERVE_PORT),
        "CURATE_POLL_SECONDS": "0.5"})
    started = time.monotonic()
    job = cluster.python(cluster.head_ns, RUN_JOB, f"http://127.0.0.1:{SERVE_PORT}", str(serve_log),
                         # The exact-dedup and MinHash fits as bucket tasks on both nodes; the
                         # reference ran the single-node fits (outputs must not depend on it).
                         json.dumps(spec | {"output": "two-nodes", "execution": {"fit_buckets": 3}}), timeout=660)
    assert job["state"] == "succeeded", f"{job}\n{cluster.logs()}"
    print(f"{variant}: two-node run through curate serve {time.monotonic() - started:.0f} s")

    # (a) Work ran on both nodes, by node id: the job's Ray Data tasks, and with a model
    # stage its actors' calls (one actor per node: each node has one CPU).
    tasks = cluster.python(cluster.head_ns, TASKS, cluster.address)
    kinds = {"task": "MapBatches(_run_units)", "actor": "_UnitActor"}
    ran = {(kind, ip): sum(t["node_id"] == node_id and t["state"].endswith("FINISHED") and pattern in t["name"]
                           for t in tasks)
           for kind, pattern in kinds.items() for ip, node_id in nodes.items()}
    print(f"{variant}: finished tasks per node {ran}")
    assert all(ran[kind, ip] > 0 for kind in kinds for ip in nodes), (ran, sorted({t["name"] for t in tasks}))
    fit_names = ("pairs_task", "ends_task", "verify_task")
    fit_tasks = {ip: sorted(t["name"] for t in tasks if t["node_id"] == node_id and t["state"].endswith("FINISHED")
                            and t["name"] in fit_names) for ip, node_id in nodes.items()}
    print(f"{variant}: bucketed fit tasks per node {fit_tasks}")
    assert sum(names.count("pairs_task") for names in fit_tasks.values()) == 2 * 3, fit_tasks  # 3 buckets, 2 fits

    # (b) The same outputs as on one node: files with rows and sha256, the funnel, and every
    # lineage row (stage, shard, document, decision, reason, change, survivor).
    multi = outputs / "two-nodes"
    manifest = json.loads((multi / "manifest.json").read_text())
    single = json.loads((reference / "manifest.json").read_text())
    assert len(manifest["files"]) == len(list((demo / "shards").glob("*.parquet"))) >= 5
    assert manifest["output"]["rows"] > 0
    assert [(f["path"], f["rows"], f["sha256"]) for f in manifest["files"]] == \
        [(f["path"], f["rows"], f["sha256"]) for f in single["files"]]
    assert manifest["funnel"] == single["funnel"]
    rows = lineage(multi)
    assert rows == lineage(reference)
    assert len(rows) == len({(r[0], r[2]) for r in rows}) == \
        sum(row["docs_in"] + row["created"] for row in manifest["funnel"])
