"""`curate serve` as a real uvicorn process on 127.0.0.1: first-start admin key,
a job submitted and polled by 20 parallel clients, output download, a property-based
run of the OpenAPI schema, and the local Ray head started and stopped with the server."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import hypothesis
import psutil
import pytest
import schemathesis
from conftest import GOOD, wait_for_job, write_shard
from schemathesis.checks import not_a_server_error

from service.local_server import LocalServer
from service.ray_head import head_processes


def start_server(tmp_path, env_extra: dict[str, str], unset: tuple[str, ...] = ()):
    server = LocalServer(tmp_path / "home", tmp_path / "data", env={"CURATE_POLL_SECONDS": "0.3", **env_extra},
                         unset=unset, log=tmp_path / "serve.log").start()
    return server, server.base, server.auth


@pytest.fixture(scope="module")
def server(ray_head, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serve")
    for s in range(4):
        write_shard(tmp_path / "data" / f"s{s}.parquet", [GOOD + f" Shard {s}, doc {i}." for i in range(300)]
                    + [GOOD, "Too short."], ids=[f"s{s}-{i}" for i in range(302)])
    running, base, auth = start_server(tmp_path, {"RAY_ADDRESS": ray_head.address,
                                                "CURATE_RAY_JOBS_URL": ray_head.jobs_url})
    yield base, auth, tmp_path
    running.stop()


def test_first_start_prints_an_admin_key_once(server):
    base, auth, tmp_path = server
    log = (tmp_path / "serve.log").read_text()
    assert log.count("created an admin key (shown once") == 1
    assert httpx.get(f"{base}/jobs", headers=auth).status_code == 200
    stored = (tmp_path / "home" / "api_keys.json").read_text()
    assert auth["Authorization"].split()[1] not in stored  # only the hash is stored


def launch(base: str, auth: dict, name: str) -> str:
    """Submit exact dedup and quality rules over the fixture's shards, output ``name``."""
    spec = {"name": name, "inputs": ["*.parquet"], "output": name,
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]}
    resp = httpx.post(f"{base}/jobs", json=spec, headers=auth, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def test_submit_poll_in_parallel_and_download(server):
    base, auth, _ = server
    job_id = launch(base, auth, "served")

    def poll(_):
        r = httpx.get(f"{base}/jobs/{job_id}", headers=auth, timeout=30)
        return r.status_code, r.json()["state"]

    seen = set()
    deadline = time.time() + 120
    with ThreadPoolExecutor(20) as pool:
        while time.time() < deadline:
            results = list(pool.map(poll, range(20)))  # 20 parallel status polls while the job runs
            assert all(code == 200 for code, _ in results)
            seen |= {state for _, state in results}
            if "succeeded" in seen or "failed" in seen:
                break
    assert "succeeded" in seen, seen
    job = httpx.get(f"{base}/jobs/{job_id}", headers=auth).json()
    # GOOD and "Too short." are in every shard: 3 + 3 exact duplicates.
    assert job["progress"]["stages"][1]["docs_out"] == 4 * 302 - 6
    doc = httpx.get(f"{base}/jobs/{job_id}/documents/s0-301", headers=auth).json()
    assert doc["reason"] == "quality_rules.too_few_words"
    dup = httpx.get(f"{base}/jobs/{job_id}/documents/s2-301", headers=auth).json()
    assert dup["reason"] == "exact_dedup.duplicate" and dup["stages"][1]["survivor_id"] == "s0-301"
    manifest = httpx.get(f"{base}/jobs/{job_id}/manifest", headers=auth).json()
    for f in manifest["files"]:
        r = httpx.get(f"{base}/jobs/{job_id}/outputs/{f['path'].split('/')[-1]}", headers=auth)
        assert hashlib.sha256(r.content).hexdigest() == f["sha256"] == r.headers["x-content-sha256"]


def wait_until_done(base, auth, job_id, seconds=180) -> dict:
    job = wait_for_job(base, auth, job_id, seconds)
    assert job["state"] == "succeeded", job
    return job


def submit_and_wait(base, auth, spec) -> str:
    resp = httpx.post(f"{base}/jobs", json=spec, headers=auth, timeout=30)
    assert resp.status_code == 201, resp.text
    wait_until_done(base, auth, resp.json()["job_id"])
    return resp.json()["job_id"]


def read_events(base: str, auth: dict, job_id: str) -> list[dict]:
    """Every ``event: job`` of one stream, until the server ends it."""
    events = []
    with httpx.stream("GET", f"{base}/jobs/{job_id}/events", headers=auth, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert kind == "job"
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_many_viewers_follow_a_job_through_one_event_stream_each(server):
    """GET /jobs/{id}/events: each change once, in order, to every viewer; the stream ends
    with the final state, which equals GET /jobs/{id}."""
    base, auth, _ = server
    job_id = launch(base, auth, "watched")
    with ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda _: read_events(base, auth, job_id), range(20)))
    final = httpx.get(f"{base}/jobs/{job_id}", headers=auth).json()
    assert final["state"] == "succeeded" and final["progress"]["complete"]
    for events in streams:
        assert events[-1] == final and all(e["state"] != "succeeded" for e in events[:-1])
        assert all(a != b for a, b in zip(events, events[1:], strict=False))  # only changes are sent
        fractions = [(e["progress"] or {}).get("fraction", 0) for e in events]
        assert fractions == sorted(fractions)
    assert max(len(events) for events in streams) >= 2  # it was watched while it ran
    assert read_events(base, auth, job_id) == [final]  # a finished job: its state, then the end
    assert httpx.get(f"{base}/jobs/nope/events", headers=auth).json()["error"]["code"] == "job_not_found"
    assert httpx.get(f"{base}/jobs/{job_id}/events").status_code == 401


def test_the_loader_resumes_an_interrupted_download_and_exports_tokens(server, tmp_path, monkeypatch):
    from conftest import run_cli

    from curate.loader import CuratedDataset
    from curate.remote import FetchError, fetch_job

    base, auth, _ = server
    job_id = submit_and_wait(base, auth, {"name": "pull", "inputs": ["*.parquet"], "output": "pull",
                                          "stages": [{"stage": "quality_rules_v1"}]})
    manifest = httpx.get(f"{base}/jobs/{job_id}/manifest", headers=auth).json()
    files, key, cache = manifest["files"], auth["Authorization"].split()[1], tmp_path / "cache"
    assert files[1]["bytes"] > 3 * 1024

    class Crash(Exception):
        pass

    def crash_in_second_shard(path, done, total):
        if path == files[1]["path"] and done >= 3 * 1024:
            raise Crash  # the client dies mid-stream: a real HTTP response half read

    with pytest.raises(Crash):
        fetch_job(base, job_id, cache_dir=cache, api_key=key, progress=crash_in_second_shard, chunk_size=1024)
    folder = cache / base.removeprefix("http://").replace(":", "_") / job_id
    part = folder / (files[1]["path"] + ".part")
    assert part.stat().st_size == 3 * 1024 and not (folder / "manifest.json").exists()  # nothing looks complete
    assert not (folder / files[1]["path"]).exists()
    resumed = fetch_job(base, job_id, cache_dir=cache, api_key=key, chunk_size=1024)
    assert resumed.reused == [files[0]["path"]] and resumed.resumed == [files[1]["path"]]
    # the Range request brought only the missing bytes of shard 2, and all of shards 3 and 4
    assert resumed.downloaded == sum(f["bytes"] for f in files[1:]) - 3 * 1024
    for f in files:
        assert hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert not list(folder.rglob("*.part"))
    data = CuratedDataset(f"{base}/jobs/{job_id}", cache_dir=cache, api_key=key)  # from the cache, verified
    assert data.root == str(folder) and data.num_rows == manifest["output"]["rows"] == 4 * 302 - 4
    # a partial download that is not the shard's beginning is caught by the sha256 and fetched whole
    (folder / files[2]["path"]).unlink()
    (folder / (files[2]["path"] + ".part")).write_bytes(b"x" * 2048)
    again = fetch_job(base, job_id, cache_dir=cache, api_key=key)
    assert again.downloaded == files[2]["bytes"] - 2048 + files[2]["bytes"]  # resumed, mismatched, fetched whole
    assert hashlib.sha256((folder / files[2]["path"]).read_bytes()).hexdigest() == files[2]["sha256"]
    with pytest.raises(FetchError, match="HTTP 401"):
        fetch_job(base, job_id, cache_dir=tmp_path / "other", api_key="curate_wrong")
    # every rank of a training run fetching at once: one download, the others wait and reuse it
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: fetch_job(base, job_id, cache_dir=tmp_path / "ranks", api_key=key), range(4)))
    assert sorted(len(r.reused) for r in runs) == [0, 4, 4, 4]
    assert sum(r.downloaded for r in runs) == sum(f["bytes"] for f in files)
    # the same path from the command line: `curate export JOB --server URL`
    monkeypatch.setenv("CURATE_API_KEY", key)
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cli-cache"))
    out = run_cli("export", job_id, "--server", base, "--tokenizer", "ablation-bpe", "--out", str(tmp_path / "tok"),
                  "--no-progress")
    tokens = json.loads((tmp_path / "tok" / "tokens.json").read_text())
    assert tokens["documents"] == data.num_rows and tokens["source"]["job_id"] == job_id
    assert f"wrote {tokens['tokens']:,} tokens of {data.num_rows:,} documents (npy, uint16" in out.stdout


def test_two_jobs_for_one_output_folder_at_once_one_is_refused(server):
    base, auth, _ = server
    specs = [{"name": f"race{i}", "inputs": ["*.parquet"], "output": "race", "stages": [{"stage": stage}]}
             for i, stage in enumerate(("quality_rules_v1", "exact_dedup_v1"))]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda spec: httpx.post(f"{base}/jobs", json=spec, headers=auth, timeout=60), specs))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409).json()["error"]
    assert refused["code"] in ("output_in_use", "output_exists") and "race" in refused["message"]
    accepted = next(a for a in answers if a.status_code == 201).json()["job_id"]
    if refused["code"] == "output_in_use":
        assert refused["details"]["job_id"] == accepted
    job = wait_until_done(base, auth, accepted)
    assert job["progress"]["stages"][1]["docs_in"] == 4 * 302


def test_the_service_rebuilds_a_lost_catalog_from_the_job_folders_on_start(ray_head, tmp_path):
    for s in range(2):
        write_shard(tmp_path / "data" / f"s{s}.parquet", [GOOD + f" Shard {s}, doc {i}." for i in range(60)]
                    + ["Too short."], ids=[f"s{s}-{i}" for i in range(61)])
    env = {"RAY_ADDRESS": ray_head.address, "CURATE_RAY_JOBS_URL": ray_head.jobs_url, "CURATE_POLL_SECONDS": "0.3"}
    first = LocalServer(tmp_path / "home", tmp_path / "data", env=env, log=tmp_path / "first.log").start()
    auth = first.auth
    try:
        job_id = submit_and_wait(first.base, auth, {"name": "kept", "inputs": ["*.parquet"], "output": "kept",
                                                    "stages": [{"stage": "quality_rules_v1"}]})
        before = {path: httpx.get(f"{first.base}{path}", headers=auth).json()
                  for path in (f"/jobs/{job_id}/stats", f"/jobs/{job_id}/documents/s1-60", f"/jobs/{job_id}/manifest")}
    finally:
        first.stop()
    (tmp_path / "home" / "catalog.duckdb").unlink()  # lost while the service was stopped
    with LocalServer(tmp_path / "home", tmp_path / "data", env=env, log=tmp_path / "second.log") as second:
        assert f"no catalog at {tmp_path / 'home' / 'catalog.duckdb'}: rebuilt the catalog from 1 job folder " \
            in second.log()
        job = httpx.get(f"{second.base}/jobs/{job_id}", headers=auth).json()
        assert job["state"] == "succeeded" and job["name"] == "kept"
        assert [j["job_id"] for j in httpx.get(f"{second.base}/jobs", headers=auth).json()["items"]] == [job_id]
        for path, body in before.items():
            assert httpx.get(f"{second.base}{path}", headers=auth).json() == body  # lineage and stats intact
        assert before[f"/jobs/{job_id}/documents/s1-60"]["reason"] == "quality_rules.too_few_words"
        logs = httpx.get(f"{second.base}/jobs/{job_id}/logs", headers=auth)  # Ray's copy is not in the folders
        assert logs.status_code == 404 and logs.json()["error"]["code"] == "logs_unavailable"


def test_a_500_kib_spec_launches_and_runs(server):
    """A command-line argument is capped at 128 KiB: the spec reaches the Ray job as a file."""
    base, auth, _ = server
    phrases = [f"blocked phrase number {i:06d}" for i in range(17_000)]
    spec = {"name": "large", "inputs": ["*.parquet"], "output": "large",
            "stages": [{"stage": "c4_lines_v1", "params": {"policy_substrings": phrases, "min_sentences": 0}}]}
    body = json.dumps(spec)
    assert len(body) > 500 * 1024
    resp = httpx.post(f"{base}/jobs", content=body, headers={**auth, "Content-Type": "application/json"}, timeout=60)
    assert resp.status_code == 201, resp.text[:500]
    job = wait_until_done(base, auth, resp.json()["job_id"], seconds=240)
    assert job["progress"]["stages"][1]["docs_in"] == 4 * 302


@pytest.fixture(scope="module")
def api_schema(server):
    base, _, _ = server
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


fuzz = schemathesis.pytest.from_fixture("api_schema")


@fuzz.parametrize()
@hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                     database=None)
def test_openapi_schema_fuzz_finds_no_server_errors(case, server):
    """Property-based requests from the OpenAPI schema, authenticated: never a 5xx."""
    base, auth, _ = server
    case.call_and_validate(base_url=base, headers=auth, checks=[not_a_server_error])


def test_stateful_fuzz_follows_the_schemas_links_and_finds_no_server_errors(server, tmp_path):
    """Schemathesis' stateful phase chains calls through the OpenAPI links (a job's id from
    POST /jobs or GET /jobs into every job route, a document's id from a lineage page into
    its lineage): never a 5xx. Its engine, not a bare Hypothesis state machine, runs it:
    a real service changes between replays (a spec launched once answers 409 the next
    time), which the engine restarts from and Hypothesis alone reports as flaky.
    Ablations are left out (a valid body would train models for minutes), and so is the
    event stream (it lasts as long as a job the fuzz launched)."""
    base, auth, _ = server
    spec = {"name": "stateful", "inputs": ["*.parquet"], "output": "stateful",
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]}
    resp = httpx.post(f"{base}/jobs", json=spec, headers=auth, timeout=60)
    assert resp.status_code in (200, 201, 409), resp.text
    job_id = resp.json()["job_id"] if resp.status_code != 409 else resp.json()["error"]["details"]["job_id"]
    assert wait_until_done(base, auth, job_id)["state"] == "succeeded"
    har = tmp_path / "calls.har"
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--phases=stateful",
         "--checks=not_a_server_error", "-H", f"Authorization: {auth['Authorization']}",
         "--exclude-operation-id=submit_ablation",
         "--exclude-operation-id=job_events", "--max-examples=150", "--seed=1", "--no-color",
         "--report=har", f"--report-har-path={har}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    calls = [(e["request"]["method"], urllib.parse.urlsplit(e["request"]["url"]).path, e["response"]["status"])
             for e in json.loads(har.read_text())["log"]["entries"]]
    assert len(calls) > 300 and all(status < 500 for _, _, status in calls)
    covered = int(re.search(r"API Links:\s+(\d+) covered", run.stdout).group(1))
    assert covered >= 10, run.stdout[-3000:]
    # Ids reach these routes only from earlier answers (a generated id is a 404).
    assert ("GET", f"/jobs/{job_id}", 200) in calls or any(
        m == "GET" and p.count("/") == 2 and p.startswith("/jobs/") and s == 200 for m, p, s in calls)
    linked = {p.split("/")[3] for m, p, s in calls if s == 200 and p.count("/") == 3 and p.startswith("/jobs/")}
    assert {"stats", "documents", "drops"} & linked and len(linked) >= 3, sorted(set(calls))[:40]


def test_serve_without_ray_address_owns_a_local_head(tmp_path, ray_head):
    (tmp_path / "data").mkdir()
    server, base, _ = start_server(tmp_path, {}, unset=("RAY_ADDRESS", "CURATE_RAY_JOBS_URL"))
    heads = [c for c in (p.cmdline() for p in psutil.Process(server.proc.pid).children()) if "--head" in c]
    assert len(heads) == 1, heads  # the server started exactly one head of its own, as its child
    assert "--block" in heads[0] and "--node-ip-address=127.0.0.1" in heads[0]
    own = next(a.removeprefix("--temp-dir=") for a in heads[0] if a.startswith("--temp-dir="))
    assert own != str(ray_head.temp_dir) and len(head_processes(own)) > 1  # `ray start` and the head's processes
    assert httpx.get(f"{base}/readyz").json()["checks"] == {"duckdb": True, "ray": True}
    server.stop()
    assert not head_processes(own) and not Path(own).exists()  # ... and stopped it on shutdown
    assert head_processes(ray_head.temp_dir)  # other clusters untouched


def test_serve_by_full_path_with_a_minimal_path_runs_jobs_and_fails_in_one_line(tmp_path):
    """A service manager or cron starts `/venv/bin/curate serve` without the venv on PATH:
    the Ray head and a job's driver come from the running interpreter, not from PATH. A
    start that cannot succeed prints one line and exits 1."""
    import signal
    import subprocess
    import sys

    import duckdb

    from service.ray_head import free_port

    curate = Path(sys.executable).parent / "curate"
    if not curate.exists():
        pytest.skip(f"no console script beside the interpreter: {curate}")
    write_shard(tmp_path / "data" / "a.parquet", [GOOD + f" Doc {i}." for i in range(30)] + ["Too short."],
                ids=[f"d{i}" for i in range(31)])

    def env(port):
        return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CURATE_HOME": str(tmp_path / "home"),
                "CURATE_DATA_ROOTS": str(tmp_path / "data"), "CURATE_PORT": str(port),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "CURATE_POLL_SECONDS": "0.3"}

    port = free_port()
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - the server writes to it while it runs
    proc = subprocess.Popen([str(curate), "serve"], env=env(port), stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        output = (tmp_path / "serve.log").read_text()
        assert proc.poll() is None, output
        key = output.split("store it now):\n", 1)[1].split()[0]
        auth = {"Authorization": f"Bearer {key}"}
        job_id = submit_and_wait(base, auth, {"name": "bare", "inputs": ["a.parquet"], "output": "bare",
                                              "stages": [{"stage": "quality_rules_v1"}]})
        assert httpx.get(f"{base}/jobs/{job_id}/documents/d30", headers=auth).json()["reason"] == \
            "quality_rules.too_few_words"
        # a second service on the same home cannot take the catalog: one line, exit 1, no Ray head started
        second = subprocess.run([str(curate), "serve"], env=env(free_port()), capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        assert second.returncode == 1 and "Traceback" not in second.stdout + second.stderr
        assert f"curate serve: cannot start: catalog {tmp_path / 'home' / 'catalog.duckdb'} is locked by another " \
               "process" in second.stderr
        assert "starting a local Ray head" not in second.stdout + second.stderr
        # and one whose port is taken says so before doing anything
        busy = subprocess.run([str(curate), "serve"], env=env(port), capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and busy.stderr.strip().startswith(f"curate serve: cannot listen on 127.0.0.1:"
                                                                        f"{port}: ")
        assert len(busy.stderr.strip().splitlines()) == 1 and not busy.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        log.close()
    with duckdb.connect(str(tmp_path / "home" / "catalog.duckdb"), read_only=True) as con:  # released on exit
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
