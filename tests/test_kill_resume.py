"""kill -9 of the driver mid-run, then the same command again: identical outputs,
no duplicate lineage rows."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import duckdb
import pytest
from conftest import GOOD, write_shard

pytestmark = pytest.mark.usefixtures("ray_cluster")

N_SHARDS, DOCS_PER_SHARD = 10, 2500
WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


def build_corpus(root):
    rng = random.Random(7)
    for s in range(N_SHARDS):
        texts = []
        for i in range(DOCS_PER_SHARD):
            if i % 50 == 0 and texts:
                texts.append(texts[rng.randrange(len(texts))])  # planted exact duplicate
            else:
                texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400))) + ".")
        write_shard(root / f"s{s:02d}.parquet", texts, ids=[f"s{s}-{i}" for i in range(len(texts))])


def write_spec(tmp_path, name, output):
    spec = {"name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(output),
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}],
            "execution": {"num_workers": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def curate(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy(), **kwargs)


def test_kill_9_mid_run_then_rerun_gives_identical_outputs(tmp_path):
    build_corpus(tmp_path / "in")
    out = tmp_path / "out"
    spec = write_spec(tmp_path, "killed", out)

    proc = curate("run", str(spec), "--no-progress")
    deadline = time.time() + 240
    # Kill once pass 2 has finished some shards but not all.
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "_done").glob("*.02-quality_rules_v1.select.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "_done").glob("*.write.json")))
    assert not (out / "manifest.json").exists() and done < N_SHARDS, "the kill did not land mid-run"

    rerun = curate("run", str(spec), "--no-progress")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())

    clean = subprocess.run([sys.executable, "-m", "service.cli", "run", str(write_spec(tmp_path, "clean",
                           tmp_path / "clean")), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    reference = json.loads((tmp_path / "clean" / "manifest.json").read_text())

    assert [(f["path"], f["rows"], f["sha256"]) for f in manifest["files"]] == [
        (f["path"], f["rows"], f["sha256"]) for f in reference["files"]]
    assert manifest["funnel"] == reference["funnel"]
    total, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (stage, doc_id)) FROM read_parquet('{out}/stages/*/decisions/*.parquet')"
    ).fetchall()[0]
    assert total == distinct == sum(row["docs_in"] for row in manifest["funnel"])
    assert not list(out.rglob(".*.tmp-*"))
