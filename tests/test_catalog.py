"""The catalog: one record per job, all SQL in one module, and a catalog written by the
previous version (jobs.status + the API's own api_jobs table) migrated on first open."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, run_cli, write_shard

from service.catalog import Catalog

V1 = """
CREATE TABLE jobs (job_id VARCHAR PRIMARY KEY, name VARCHAR, status VARCHAR, error VARCHAR, output VARCHAR,
    spec_hash VARCHAR, code_version VARCHAR, spec JSON, model_hashes JSON, created_at VARCHAR, completed_at VARCHAR,
    input_rows BIGINT, output_rows BIGINT);
CREATE TABLE stages (job_id VARCHAR, stage_index INTEGER, stage VARCHAR, params JSON, docs_in BIGINT, kept BIGINT,
    dropped BIGINT, reasons JSON);
CREATE TABLE shards (job_id VARCHAR, kind VARCHAR, path VARCHAR, rows BIGINT, bytes BIGINT, sha256 VARCHAR);
CREATE TABLE stage_stats (job_id VARCHAR, stage_index INTEGER, stage VARCHAR, shard VARCHAR, docs_in BIGINT,
    kept BIGINT, dropped BIGINT, reasons JSON, text_bytes_in BIGINT, text_bytes_kept BIGINT, score_seconds DOUBLE);
CREATE TABLE api_jobs (job_id VARCHAR PRIMARY KEY, name VARCHAR, output VARCHAR, spec JSON, created_at VARCHAR,
    idempotency_key VARCHAR, state VARCHAR, error VARCHAR, attempts INTEGER, submission_id VARCHAR);
INSERT INTO jobs VALUES ('cli-1', 'cli', 'succeeded', NULL, '/gone/cli', 'h1', 'git:x', '{}', '{}', '2026-01-01',
    '2026-01-01', 10, 7);
INSERT INTO jobs VALUES ('api-1', 'api', 'incomplete', NULL, '/gone/api', 'h2', 'git:x', '{}', '{}', '2026-01-02',
    NULL, 5, NULL);
INSERT INTO api_jobs VALUES ('api-1', 'api', '/gone/api', '{}', '2026-01-02', 'key-1', 'failed', 'boom', 2, 'api-1-2');
INSERT INTO api_jobs VALUES ('queued-1', 'q', '/gone/q', '{}', '2026-01-03', NULL, 'queued', NULL, 1, 'queued-1-1');
"""


def test_a_version_1_catalog_is_migrated_into_one_job_record(tmp_path):
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute(V1)
    con.close()
    with Catalog(path, read_only=True) as c:  # `curate why` / `curate jobs` first: migrated all the same
        jobs = {r["job_id"]: r for r in c.sql("SELECT job_id, state, error, idempotency_key, attempts, submission_id, "
                                               "output_rows FROM jobs")}
        tables = {r["table_name"] for r in c.sql("SELECT table_name FROM information_schema.tables")}
        version = c.sql("SELECT value FROM catalog_meta WHERE key = 'schema_version'")[0]["value"]
    assert jobs["cli-1"] == {"job_id": "cli-1", "state": "succeeded", "error": None, "idempotency_key": None,
                             "attempts": None, "submission_id": None, "output_rows": 7}
    assert jobs["api-1"]["state"] == "failed" and jobs["api-1"]["error"] == "boom"
    assert (jobs["api-1"]["idempotency_key"], jobs["api-1"]["attempts"]) == ("key-1", 2)
    assert jobs["queued-1"]["submission_id"] == "queued-1-1"
    assert "api_jobs" not in tables and version == "2"
    with Catalog(path) as c:  # opening again changes nothing
        assert len(c.sql("SELECT * FROM jobs")) == 3


def test_submissions_and_folder_facts_share_one_record(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as c:
        c.save_submission({"job_id": "j-1", "name": "j", "output": str(tmp_path / "out"), "spec": "{}",
                           "created_at": "2026-01-01", "idempotency_key": "k", "state": "queued", "error": None,
                           "error_code": None, "attempts": 1, "submission_id": "j-1-1-abc"})
        c.save_submission({"job_id": "j-1", "state": "failed", "error": "bad row", "error_code": "bad_input"})
        (row,) = c.sql("SELECT state, error_code, idempotency_key, attempts FROM jobs")
        assert row == {"state": "failed", "error_code": "bad_input", "idempotency_key": "k", "attempts": 1}
        assert [s["job_id"] for s in c.submissions()] == ["j-1"]



@pytest.mark.usefixtures("ray_cluster")
def test_why_reads_a_job_folder_written_before_lineage_had_a_detail_column(tmp_path):
    """Lineage files of an older version lack `detail`: `why` and listings still work."""
    write_shard(tmp_path / "in" / "a.parquet", [GOOD, "Too short."], ids=["good", "short"])
    spec = {"name": "old", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
            "stages": [{"stage": "quality_rules_v1"}]}
    (tmp_path / "old.json").write_text(json.dumps(spec))
    run_cli("run", str(tmp_path / "old.json"), "--no-progress")
    for path in (tmp_path / "out").glob("stages/*/decisions/*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns(["detail"]), path)
    answer = json.loads(run_cli("why", "old", "short", "--json").stdout)
    assert answer["reason"] == "quality_rules.too_few_words" and answer["stages"][-1]["detail"] is None
    with Catalog(read_only=True) as c:
        rows = c.lineage_rows("old", decision="drop")
    assert [r["doc_id"] for r in rows] == ["short"] and rows[0]["detail"] is None
