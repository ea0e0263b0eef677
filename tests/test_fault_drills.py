"""Fault drills (issue 17): what a second run, a crash or a full disk does to a job folder.
Each drill asserts the outputs a user keeps, not just that an error was raised."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from conftest import GOOD, run_cli, start_cli, wait_for_job, write_shard

pytestmark = pytest.mark.usefixtures("ray_cluster")


def write_spec(tmp_path, name, stages):
    spec = {"name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
            "stages": stages, "execution": {"num_workers": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def test_a_second_run_into_a_running_jobs_folder_is_refused_and_changes_nothing(tmp_path):
    rng = random.Random(3)
    words = GOOD.lower().replace(",", "").replace(".", "").split() + [f"w{i}" for i in range(500)]
    for s in range(6):
        texts = [" ".join(rng.choices(words, k=80)) + "." for _ in range(3000)]
        write_shard(tmp_path / "in" / f"s{s}.parquet", texts, ids=[f"s{s}-{i}" for i in range(3000)])
    slow = write_spec(tmp_path, "first", [{"stage": "quality_rules_v1"}, {"stage": "minhash_dedup_v1"}])
    other = write_spec(tmp_path, "second", [{"stage": "exact_dedup_v1"}])
    lock = tmp_path / ".out.run-lock"
    first = start_cli("run", str(slow), "--no-progress")
    deadline = time.time() + 180  # a loaded machine can take a while to start the CLI
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(f"pid {first.pid} ")):
        time.sleep(0.05)
    assert lock.exists() and lock.read_text().startswith(f"pid {first.pid} "), "the first run never took the lock"
    for spec in (other, slow):  # another job, and the same job twice at once
        second = run_cli("run", str(spec), "--no-progress", check=False)
        assert first.poll() is None, "the first run ended before the second was tried"
        assert second.returncode == 1
        assert f"error: {tmp_path / 'out'} is in use by another run (pid {first.pid} on " in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert not (tmp_path / "out" / "error.json").exists()  # the refused runs wrote nothing into the folder
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["name"] == "first" and manifest["input"]["rows"] == 18_000
    jobs = run_cli("jobs").stdout.splitlines()
    assert sum(str(tmp_path / "out") in line for line in jobs) == 1  # registered once, as succeeded
    assert lock.read_text() == ""  # released: the lock names no holder
    again = run_cli("run", str(slow), "--no-progress")  # and the folder is usable again
    assert f"job {manifest['job_id']}" in again.stdout


def lineage_counts(catalog_path, job_id):
    from service.catalog import Catalog

    with Catalog(catalog_path, read_only=True) as c:
        return c.sql("SELECT stage, decision, reason, count(*) AS n FROM decisions WHERE job_id = ? "
                     "GROUP BY ALL ORDER BY ALL", [job_id])


def test_a_lost_or_damaged_catalog_is_rebuilt_from_the_job_folders(tmp_path):
    import os

    for s in range(2):
        write_shard(tmp_path / "in" / f"s{s}.parquet", [GOOD + f" Shard {s}, document {i}." for i in range(50)]
                    + [GOOD, "Too short."], ids=[f"s{s}-{i}" for i in range(52)])
    run_cli("run", str(write_spec(tmp_path, "kept", [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}])),
            "--no-progress")
    job_id = json.loads((tmp_path / "out" / "manifest.json").read_text())["job_id"]
    catalog = tmp_path / "curate-home" / "catalog.duckdb"
    before, listed = lineage_counts(catalog, job_id), run_cli("jobs").stdout
    assert sum(r["n"] for r in before) >= 104 and job_id in listed

    catalog.unlink()  # lost
    res = run_cli("catalog", "rebuild", str(tmp_path))
    assert res.stdout == f"no catalog at {catalog}: rebuilt the catalog from 1 job folder under {tmp_path}\n"
    assert lineage_counts(catalog, job_id) == before and run_cli("jobs").stdout == listed

    catalog.write_bytes(catalog.read_bytes()[:6000])  # damaged: truncated
    res = run_cli("jobs", check=False)
    assert res.returncode == 1 and f"catalog {catalog} cannot be opened" in res.stderr
    assert "`curate catalog rebuild` moves it aside" in res.stderr
    res = run_cli("catalog", "rebuild", str(tmp_path))
    assert f"catalog {catalog} could not be opened (" in res.stdout
    assert "rebuilt the catalog from 1 job folder " in res.stdout
    aside = [p for p in os.listdir(catalog.parent) if p.startswith("catalog.duckdb.damaged-")]
    assert len(aside) == 1  # kept for inspection, not deleted
    assert lineage_counts(catalog, job_id) == before and run_cli("jobs").stdout == listed
    again = run_cli("catalog", "rebuild", str(tmp_path))  # safe to repeat: known jobs stay as they are
    assert "registered 0 job folders" in again.stdout and lineage_counts(catalog, job_id) == before


def random_shards(folder, shards, rows, seed=3):
    rng = random.Random(seed)
    words = GOOD.lower().replace(",", "").replace(".", "").split() + [f"w{i}" for i in range(500)]
    for s in range(shards):
        texts = [" ".join(rng.choices(words, k=80)) + "." for _ in range(rows)] + ["Too short."]
        write_shard(folder / f"s{s}.parquet", texts, ids=[f"s{s}-{i}" for i in range(rows + 1)])


def same_outputs(out, clean):
    """Outputs and lineage equal a clean run's: same rows and sha256, no duplicate lineage rows."""
    import duckdb

    manifest = json.loads((out / "manifest.json").read_text())
    reference = json.loads((clean / "manifest.json").read_text())
    assert [(f["path"], f["rows"], f["sha256"]) for f in manifest["files"]] == \
        [(f["path"], f["rows"], f["sha256"]) for f in reference["files"]]
    assert manifest["funnel"] == reference["funnel"]
    total, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT (stage, doc_id)) FROM "
                                 f"read_parquet('{out}/stages/*/decisions/*.parquet')").fetchall()[0]
    assert total == distinct == sum(row["docs_in"] + row["created"] for row in manifest["funnel"])
    return manifest


def test_kill_9_of_the_api_while_a_job_runs_loses_nothing(ray_head, tmp_path):
    import httpx

    from service.local_server import LocalServer

    random_shards(tmp_path / "data", shards=6, rows=3000)
    stages = [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]
    clean_spec = {"name": "clean", "inputs": [str(tmp_path / "data" / "*.parquet")], "output": str(tmp_path / "clean"),
                  "stages": stages}
    (tmp_path / "clean.json").write_text(json.dumps(clean_spec))
    run_cli("run", str(tmp_path / "clean.json"), "--no-progress")  # the uninterrupted reference
    env = {"RAY_ADDRESS": ray_head.address, "CURATE_RAY_JOBS_URL": ray_head.jobs_url, "CURATE_POLL_SECONDS": "0.3"}
    first = LocalServer(tmp_path / "home", tmp_path / "data", env=env, log=tmp_path / "first.log").start()
    auth = first.auth
    resp = httpx.post(f"{first.base}/jobs", headers=auth, timeout=30,
                      json={"name": "served", "inputs": ["*.parquet"], "output": "served", "stages": stages})
    job_id = resp.json()["job_id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        job = httpx.get(f"{first.base}/jobs/{job_id}", headers=auth).json()
        if job["state"] == "running" and job["progress"] and job["progress"]["fraction"] > 0:
            break
        time.sleep(0.1)
    assert job["state"] == "running" and job["progress"]["fraction"] < 1, job
    first.proc.kill()  # kill -9 of the API; the job's driver runs on Ray, not in it
    first.proc.wait()
    with LocalServer(tmp_path / "home", tmp_path / "data", env=env, log=tmp_path / "second.log") as second:
        job = wait_for_job(second.base, auth, job_id)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job  # the same run, not a new one
        jobs = httpx.get(f"{second.base}/jobs", headers=auth).json()["items"]
        assert [j["job_id"] for j in jobs] == [job_id]
    manifest = same_outputs(Path(job["output"]), tmp_path / "clean")
    import duckdb

    with duckdb.connect(str(tmp_path / "home" / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM jobs WHERE job_id = ?", [job_id]).fetchone() == (1,)
        stage_rows = con.execute("SELECT count(*) FROM stages WHERE job_id = ?", [job_id]).fetchone()[0]
    assert stage_rows == len(manifest["funnel"])  # registered once: no duplicated stage rows


def busy_ray_workers():
    """Ray worker processes running a task of a curation pass (their title names the task)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or ())
        if title.startswith("ray::") and "_run_units" in title:
            found.append(proc)
    return found


def test_kill_9_of_a_ray_worker_mid_stage_is_retried_and_changes_nothing(tmp_path):
    import os
    import signal

    random_shards(tmp_path / "in", shards=8, rows=3000)
    spec = write_spec(tmp_path, "drill", [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}])
    clean = json.loads(spec.read_text()) | {"output": str(tmp_path / "clean"), "name": "clean"}
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    run_cli("run", str(tmp_path / "clean.json"), "--no-progress")
    proc = start_cli("run", str(spec), "--no-progress")
    killed, deadline = None, time.time() + 240
    while time.time() < deadline and proc.poll() is None and killed is None:
        busy = busy_ray_workers()
        if busy and len(list((tmp_path / "out" / "_done").rglob("*.json"))) >= 2:
            killed = busy[0].pid
            os.kill(killed, signal.SIGKILL)  # a worker dies mid-task; Ray runs the task again elsewhere
        time.sleep(0.02)
    assert killed is not None and proc.poll() is None, "no busy Ray worker was caught mid-run"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    same_outputs(tmp_path / "out", tmp_path / "clean")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (a job below needs 2.9 MiB) (mount needs root; skipped where it is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_job_cleanly_and_a_retry_after_freeing_space_finishes(tmp_path, small_disk):
    import subprocess

    random_shards(tmp_path / "in", shards=4, rows=3000)
    spec = json.loads(write_spec(tmp_path, "full", [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}])
                      .read_text()) | {"output": str(small_disk / "out")}
    (tmp_path / "full.json").write_text(json.dumps(spec))
    clean = spec | {"output": str(tmp_path / "clean"), "name": "clean"}
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    run_cli("run", str(tmp_path / "clean.json"), "--no-progress")
    res = run_cli("run", str(tmp_path / "full.json"), "--no-progress", check=False)
    assert res.returncode == 1 and "No space left on device" in res.stderr
    out = small_disk / "out"
    error = json.loads((out / "error.json").read_text()) if (out / "error.json").exists() else None
    # error.json, when the full disk still let it be written, says the same with its code
    assert error is None or (error["code"] == "write_failed" and f"cannot write {out}/" in error["message"])
    assert f"cannot write {out}/" in res.stderr  # the file that could not be written is named
    assert not (out / "manifest.json").exists()  # nothing looks complete
    for marker in (out / "_done" / "write").glob("*.json"):  # a shard with a marker is whole
        facts = json.loads(marker.read_text())
        shard = out / "data" / f"{marker.stem}.parquet"
        assert shard.stat().st_size == facts["bytes"]
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)  # space freed
    run_cli("run", str(tmp_path / "full.json"), "--no-progress")  # the same command resumes and finishes
    same_outputs(out, tmp_path / "clean")
    assert not (out / "error.json").exists()


def test_the_ray_cluster_lost_between_passes_then_a_rerun_on_a_new_one_resumes(tmp_path):
    """`curate run` without RAY_ADDRESS starts its own local cluster; its head processes
    (GCS and raylet) are killed between passes, and the same command, on a new cluster,
    finishes the job."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    random_shards(tmp_path / "in", shards=4, rows=3000)
    spec = write_spec(tmp_path, "drill", [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}])
    clean = json.loads(spec.read_text()) | {"output": str(tmp_path / "clean"), "name": "clean"}
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    run_cli("run", str(tmp_path / "clean.json"), "--no-progress")
    fit = tmp_path / "out" / "_done" / "01-exact_dedup_v1.fit.json"
    own = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "service.cli", "run", str(spec), "--no-progress"]
    proc = subprocess.Popen(command, env=own, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not fit.exists():
        time.sleep(0.02)
    assert fit.exists() and proc.poll() is None, "the first passes did not end while the job ran"
    head = [p for p in psutil.Process(proc.pid).children(recursive=True)
            if any(name in " ".join(p.cmdline()) for name in ("gcs_server", "raylet"))]
    assert len(head) == 2
    for p in head:
        os.kill(p.pid, signal.SIGKILL)  # the cluster dies between passes
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "out" / "manifest.json").exists(), err
    marked = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "_done").rglob("*.json")}
    fitted_at = fit.stat().st_mtime_ns
    rerun = subprocess.run(command, env=own, capture_output=True, text=True, timeout=600)  # a new cluster
    assert rerun.returncode == 0, rerun.stderr
    same_outputs(tmp_path / "out", tmp_path / "clean")
    assert fit.stat().st_mtime_ns == fitted_at  # the finished fit was kept, not redone
    assert marked <= {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "_done").rglob("*.json")}
