"""kill -9 of the driver mid-run, then the same command again: identical outputs, no
duplicate lineage rows, also for documents a transform created."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import duckdb
import pytest
from conftest import GOOD, run_cli, start_cli, write_shard

pytestmark = pytest.mark.usefixtures("ray_cluster")

WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


def write_spec(tmp_path, name, output, stages):
    spec = {"name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(output), "stages": stages,
            "execution": {"num_workers": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def kill_mid_run(spec, out, step: str, shards: int) -> None:
    """Start `curate run`, kill -9 it once ``step`` finished 2 units, assert it was mid-run."""
    proc = start_cli("run", str(spec), "--no-progress")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "_done" / step).glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "_done" / "write").glob("*.json")))
    assert not (out / "manifest.json").exists() and done < shards, "the kill did not land mid-run"


def assert_same_as_clean(out, clean) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    reference = json.loads((clean / "manifest.json").read_text())
    assert [(f["path"], f["rows"], f["sha256"]) for f in manifest["files"]] == [
        (f["path"], f["rows"], f["sha256"]) for f in reference["files"]]
    assert manifest["funnel"] == reference["funnel"]
    total, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (stage, doc_id)) FROM read_parquet('{out}/stages/*/decisions/*.parquet')"
    ).fetchall()[0]
    assert total == distinct == sum(row["docs_in"] + row["created"] for row in manifest["funnel"])
    assert not list(out.rglob(".*.tmp-*"))
    return manifest


def test_kill_9_mid_run_then_rerun_gives_identical_outputs(tmp_path):
    rng = random.Random(7)
    for s in range(10):
        texts = []
        for i in range(2500):
            if i % 50 == 0 and texts:
                texts.append(texts[rng.randrange(len(texts))])  # planted exact duplicate
            else:
                texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400))) + ".")
        write_shard(tmp_path / "in" / f"s{s:02d}.parquet", texts, ids=[f"s{s}-{i}" for i in range(len(texts))])
    stages = [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]
    out = tmp_path / "out"
    spec = write_spec(tmp_path, "killed", out, stages)
    kill_mid_run(spec, out, "02-quality_rules_v1.select", 10)  # pass 2 has finished some units, not all
    run_cli("run", str(spec), "--no-progress")
    run_cli("run", str(write_spec(tmp_path, "clean", tmp_path / "clean", stages)), "--no-progress")
    assert_same_as_clean(out, tmp_path / "clean")


def test_kill_9_with_created_documents_then_rerun_is_byte_identical(tmp_path):
    rng = random.Random(11)
    for s in range(6):
        texts = ["\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "."
                             for _ in range(rng.randint(1, 3))) for _ in range(1500)]
        write_shard(tmp_path / "in" / f"s{s}.parquet", texts, ids=[f"s{s}-{i}" for i in range(len(texts))])
    split = "split_paragraphs_test_v1"
    stages = [{"stage": split}, {"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1", "params": {"min_words": 45}}]
    out = tmp_path / "out"
    spec = write_spec(tmp_path, "killed", out, stages)
    kill_mid_run(spec, out, "03-quality_rules_v1.select", 6)
    run_cli("run", str(spec), "--no-progress")
    run_cli("run", str(write_spec(tmp_path, "clean", tmp_path / "clean", stages)), "--no-progress")
    manifest = assert_same_as_clean(out, tmp_path / "clean")
    assert manifest["output"]["created"] > 1000
    versions = sorted((out / "stages" / f"01-{split}" / "docs").glob("*.parquet"))
    clean_versions = sorted((tmp_path / "clean" / "stages" / f"01-{split}" / "docs").glob("*.parquet"))
    assert len(versions) == 6 and [v.read_bytes() for v in versions] == [v.read_bytes() for v in clean_versions]
