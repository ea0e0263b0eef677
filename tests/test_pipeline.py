"""End to end on a real local Ray cluster and a real DuckDB catalog file."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, WEB_POOL, needs_shared, write_shard

from service.catalog import Catalog, why
from workers import atomic
from workers.job import run_job
from workers.spec import parse_spec

pytestmark = pytest.mark.usefixtures("ray_cluster")

STAGES = [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]


def make_spec(tmp_path, inputs, stages=STAGES, name="t", **extra):
    return parse_spec({"name": name, "inputs": inputs, "output": str(tmp_path / "out"), "stages": stages, **extra})


@pytest.fixture
def inline_job(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet",
                [GOOD, GOOD.upper(), "Too short.", None, "  \n ", GOOD + " And one more sentence about the bridge."],
                ids=["a0", "a1", "a2", "a3", "a4", "a5"], lang=["en"] * 6)
    write_shard(tmp_path / "in" / "b.parquet", ["  " + GOOD, "#x " * 60, GOOD.replace("city", "town")],
                ids=["b0", "b1", "b2"], lang=["en"] * 3)
    spec = make_spec(tmp_path, [str(tmp_path / "in" / "*.parquet")])
    manifest = run_job(spec, progress=False)
    with Catalog() as c:
        c.register_job(spec.output)
    return spec, manifest


def test_funnel_reasons_and_counts(inline_job):
    spec, manifest = inline_job
    f = {row["stage"]: row for row in manifest["funnel"]}
    assert (f["input_v1"]["docs_in"], f["input_v1"]["kept"]) == (9, 7)
    assert f["input_v1"]["reasons"] == {"input.null_text": 1, "input.empty_text": 1}
    assert f["exact_dedup_v1"]["reasons"] == {"exact_dedup.duplicate": 2}  # a1 (case) and b0 (whitespace)
    assert f["quality_rules_v1"]["reasons"] == {  # a2 ("Too short."), b1 ("#x #x ...": 1-letter words)
        "quality_rules.too_few_words": 1, "quality_rules.short_mean_word_length": 1}
    kept = sorted(i for p in manifest["files"] for i in pq.read_table(f"{spec.output}/{p['path']}")["id"].to_pylist())
    assert kept == ["a0", "a5", "b2"]
    assert manifest["output"]["rows"] == 3 and manifest["input"]["rows"] == 9


def test_outputs_keep_passthrough_columns_and_manifest_hashes(inline_job):
    spec, manifest = inline_job
    for f in manifest["files"]:
        path = f"{spec.output}/{f['path']}"
        t = pq.read_table(path)
        assert t.column_names == ["id", "text", "lang"] and t.num_rows == f["rows"]
        assert atomic.sha256_file(path) == f["sha256"]
    assert manifest["spec_hash"] == spec.spec_hash() and manifest["code_version"]


def test_every_input_document_is_accounted_for_in_lineage(inline_job):
    spec, _ = inline_job
    with Catalog(read_only=True) as c:
        reached_input = c.sql(
            "SELECT count(*) AS n, count(DISTINCT doc_id) AS d FROM decisions WHERE stage = 'input_v1'")[0]
        dup_rows = c.sql(
            "SELECT count(*) AS n FROM (SELECT stage, doc_id FROM decisions GROUP BY ALL HAVING count(*) > 1)")[0]
        drops = c.sql("SELECT count(*) AS n FROM decisions WHERE decision = 'drop'")[0]["n"]
        out_rows = c.sql("SELECT sum(rows) AS n FROM shards WHERE kind = 'output'")[0]["n"]
    assert reached_input == {"n": 9, "d": 9} and dup_rows == {"n": 0}
    assert out_rows == 9 - drops


def test_why_explains_drop_and_keep(inline_job):
    spec, _ = inline_job
    dup = why("t", "a1")
    assert dup["outcome"] == "dropped" and dup["dropped_at"] == "exact_dedup_v1"
    assert dup["reason"] == "exact_dedup.duplicate"
    assert dup["stages"][1]["survivor_id"] == "a0" and dup["stages"][1]["scores"]["group_size"] == 3.0  # a0, a1, b0
    assert [s["stage"] for s in dup["stages"]] == ["input_v1", "exact_dedup_v1"]
    null = why(spec.job_id(), "a3")
    assert null["reason"] == "input.null_text" and null["stages"][0]["scores"]["is_null"] == 1.0
    kept = why(spec.output, "a0")
    assert kept["outcome"] == "kept" and len(kept["stages"]) == 3
    assert kept["stages"][2]["scores"]["word_count"] >= 50
    assert why("t", "nope")["outcome"] == "unknown"


def test_rerun_resumes_from_markers_and_reproduces_outputs(tmp_path, inline_job):
    spec, manifest = inline_job
    out = tmp_path / "out"
    # Simulate a crash in the middle of pass 2: its markers and outputs for one shard vanish.
    (out / "manifest.json").unlink()
    for marker in (out / "_done").glob("*/00001-b.*"):
        if "exact_dedup" not in marker.parent.name or "select" in marker.parent.name:
            marker.unlink()
    (out / "data" / "00001-b.parquet").unlink()
    before = {str(p): p.stat().st_mtime_ns for p in (out / "_done").glob("*/00000-a.*")}
    again = run_job(spec, progress=False)
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in manifest["files"]]
    assert {str(p): p.stat().st_mtime_ns for p in (out / "_done").glob("*/00000-a.*")} == before  # a untouched
    decisions = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/stages/*/decisions/*.parquet')").fetchall()[0]
    assert decisions == (9 + 7 + 5,)


def test_changed_spec_refuses_existing_folder_unless_overwrite(tmp_path, inline_job):
    spec, _ = inline_job
    other = make_spec(tmp_path, spec.inputs, stages=[{"stage": "quality_rules_v1", "params": {"min_words": 5}}])
    from workers.job import JobError

    with pytest.raises(JobError, match="holds job t-.* with another spec; use a new output folder or --overwrite"):
        run_job(other, progress=False)
    m = run_job(other, progress=False, overwrite=True)
    assert m["spec_hash"] == other.spec_hash() and not (tmp_path / "out" / "stages" / "01-exact_dedup_v1").exists()


@needs_shared(WEB_POOL)
def test_web_pool_rows_equal_input_minus_recorded_drops(tmp_path):
    spec = make_spec(tmp_path, [str(WEB_POOL)], name="web")
    manifest = run_job(spec, progress=False)
    with Catalog() as c:
        c.register_job(spec.output)
        drops = {r["reason"]: r["n"] for r in c.sql(
            "SELECT reason, count(*) AS n FROM decisions WHERE job_id = ? AND decision = 'drop' GROUP BY reason",
            [spec.job_id()])}
    assert manifest["input"]["rows"] == 1907
    assert manifest["output"]["rows"] == 1907 - sum(drops.values())
    assert drops["input.empty_text"] == 27  # the pool's 27 empty docs, recorded, not lost
    assert drops["exact_dedup.duplicate"] > 0 and drops.get("quality_rules.too_few_words", 0) > 0
    out_ids = set(pq.read_table(f"{spec.output}/{manifest['files'][0]['path']}")["id"].to_pylist())
    all_ids = set(pq.read_table(WEB_POOL, columns=["id"])["id"].to_pylist())
    dropped_ids = set(duckdb.sql(
        f"SELECT doc_id FROM read_parquet('{spec.output}/stages/*/decisions/*.parquet') WHERE decision='drop'"
    ).fetchnumpy()["doc_id"].tolist())
    assert out_ids | dropped_ids == all_ids and not out_ids & dropped_ids


def test_why_survives_a_deleted_job_folder(tmp_path, inline_job):
    import shutil

    spec, _ = inline_job
    other = make_spec(tmp_path / "second", spec.inputs, name="second")
    run_job(other, progress=False)
    with Catalog() as c:
        c.register_job(other.output)
    shutil.rmtree(spec.output)  # the first job's folder is gone
    assert why("second", "a0")["outcome"] == "kept"  # other jobs still answer
    from service.catalog import CatalogError

    with pytest.raises(CatalogError, match="its folder .* no longer exists"):
        why("t", "a0")
