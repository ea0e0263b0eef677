"""Fault drills (issue 17): what a second run, a crash or a full disk does to a job folder.
Each drill asserts the outputs a user keeps, not just that an error was raised."""

from __future__ import annotations

import json
import random
import time

import pytest
from conftest import GOOD, run_cli, start_cli, write_shard

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
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(f"pid {first.pid} ")):
        time.sleep(0.05)
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
    assert res.stdout == f"no catalog at {catalog}: rebuilt the catalog from 1 job folders under {tmp_path}\n"
    assert lineage_counts(catalog, job_id) == before and run_cli("jobs").stdout == listed

    catalog.write_bytes(catalog.read_bytes()[:6000])  # damaged: truncated
    res = run_cli("jobs", check=False)
    assert res.returncode == 1 and f"catalog {catalog} cannot be opened" in res.stderr
    assert "`curate catalog rebuild` moves it aside" in res.stderr
    res = run_cli("catalog", "rebuild", str(tmp_path))
    assert f"catalog {catalog} could not be opened (" in res.stdout
    assert "rebuilt the catalog from 1 job folders" in res.stdout
    aside = [p for p in os.listdir(catalog.parent) if p.startswith("catalog.duckdb.damaged-")]
    assert len(aside) == 1  # kept for inspection, not deleted
    assert lineage_counts(catalog, job_id) == before and run_cli("jobs").stdout == listed
    again = run_cli("catalog", "rebuild", str(tmp_path))  # safe to repeat: known jobs stay as they are
    assert "registered 0 job folders" in again.stdout and lineage_counts(catalog, job_id) == before
