"""The CLI as a user runs it: real subprocesses, real Ray, real catalog file."""

from __future__ import annotations

import json
import re

import pytest
from conftest import GOOD, WEB_POOL, needs_shared, write_shard
from conftest import run_cli as curate

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_demo_runs_end_to_end_and_why_explains_its_examples(tmp_path):
    res = curate("demo", "--out", str(tmp_path / "demo"), "--max-docs", "400", "--no-progress")
    out = res.stdout
    assert re.search(r"demo corpus: \d+ docs", out)
    for stage in ("input_v1", "exact_dedup_v1", "minhash_dedup_v1", "c4_lines_v1", "quality_rules_v1",
                  "perplexity_v1"):
        assert re.search(rf"^{stage}\s+\d+\s+\d+\s+\d+", out, re.M), out
    assert "perplexity.bucket_tail=" in out  # the 10% least English-like of what the rules kept
    assert re.search(r"^c4_lines_v1 .*c4_lines\.too_few_sentences=\d+.*\(edited \d+\)$", out, re.M), out
    assert "input.null_text=3" in out and "exact_dedup.duplicate=" in out
    manifest = json.loads((tmp_path / "demo" / "run" / "manifest.json").read_text())
    assert manifest["output"]["rows"] > 0
    examples = re.findall(r"curate why (\S+) '([^']+)'", out)
    assert len(examples) == 2
    (job, dropped), (_, kept) = examples
    why_drop = curate("why", job, dropped).stdout
    assert re.search(r"DROPPED at quality_rules_v1: quality_rules\.\w+", why_drop), why_drop
    assert "[0] input_v1" in why_drop and "word_count=" in why_drop
    why_keep = curate("why", job, kept, "--json").stdout
    answer = json.loads(why_keep)
    assert answer["outcome"] == "kept" and [s["stage"] for s in answer["stages"]] == [
        "input_v1", "exact_dedup_v1", "minhash_dedup_v1", "c4_lines_v1", "quality_rules_v1", "perplexity_v1"]
    assert answer["stages"][-1]["scores"]["bits_per_byte"] > 0
    jobs = curate("jobs").stdout
    assert job in jobs and "succeeded" in jobs


def test_run_prints_funnel_and_registers_job(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD, GOOD, "tiny"], ids=["a", "b", "c"])
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: cli\ninputs: ['{tmp_path}/in/*.parquet']\noutput: {tmp_path}/out\n"
                    "stages:\n  - stage: exact_dedup_v1\n  - stage: quality_rules_v1\n")
    res = curate("run", str(spec), "--no-progress")
    assert re.search(r"job cli-\w+: 1 of 3 docs kept in 1 shards", res.stdout)
    why = curate("why", "cli", "b").stdout
    assert "DROPPED at exact_dedup_v1: exact_dedup.duplicate" in why and "survivor=a" in why
    # Rerunning a finished job is a no-op that reports the same result.
    assert "1 of 3 docs kept" in curate("run", str(spec), "--no-progress").stdout


def test_invalid_spec_exits_2_naming_the_field(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ninputs: [a.parquet]\noutput: out\nstages:\n"
                    "  - stage: quality_rules_v1\n    params: {min_words: lots}\n")
    res = curate("run", str(spec), check=False)
    assert res.returncode == 2
    assert "stages.0: params.min_words: Input should be a valid integer" in res.stderr


def test_why_before_any_job_and_for_unknown_job(tmp_path):
    res = curate("why", "no-such-job", "x", check=False)
    assert res.returncode == 2 and "no catalog at" in res.stderr
    from service.catalog import Catalog

    Catalog().close()  # an empty catalog now exists
    res = curate("why", "no-such-job", "x", check=False)
    assert res.returncode == 2 and "no job 'no-such-job' in catalog" in res.stderr


def test_ingest_cli_reports_shards(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    res = curate("ingest", str(src), "--out", str(tmp_path / "shards"), "--shard-rows", "2")
    assert "wrote 5 docs in 3 shards" in res.stdout and "ids derived" in res.stdout


@needs_shared(WEB_POOL)
def test_ingest_cli_on_parquet_with_contents_column(tmp_path):
    src = WEB_POOL.parent / "dpk_hap_web50.parquet"
    res = curate("ingest", str(src), "--out", str(tmp_path / "s"), "--text-field", "contents",
                 "--id-field", "doc_id")
    assert "wrote 50 docs in 1 shards" in res.stdout
