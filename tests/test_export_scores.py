"""export_scores: one stage's lineage as one flat Parquet file (no map column), so Hugging
Face datasets, pandas and any Parquet reader load it; values equal the lineage's map."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GOOD

from workers.export_scores import COLUMNS, ExportError, export_scores
from workers.local import run_stages

SPLIT = "split_paragraphs_test_v1"  # the tests' 1→N transform (conftest registers it)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A real job folder: a transform that creates documents (parent_id, change), exact dedup
    (cluster_id, survivor_id), quality rules (scores, drop reasons), over 2 work units."""
    tmp = tmp_path_factory.mktemp("export")
    texts = [GOOD, GOOD, "tiny", None, "   ", f"{GOOD}\n\n{GOOD.upper()}", f"KEEP {GOOD}\n\nsecond paragraph here",
             GOOD.replace("city", "town"), "# # # # # # # # #", GOOD + " more"]
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    run = run_stages([SPLIT, "exact_dedup_v1", ("quality_rules_v1", {"min_words": 5})], table,
                     unit_rows=5, workdir=tmp / "w")
    return tmp / "w" / "job", run


@pytest.mark.parametrize("stage", ["quality_rules_v1", SPLIT, "exact_dedup_v1", "input_v1"])
def test_wide_columns_equal_the_lineage_map(job, tmp_path, stage):
    folder, run = job
    result = export_scores(folder, stage, tmp_path / "s.parquet")
    table = pq.read_table(result.path)
    lineage = run.decisions(stage)
    names = list(dict.fromkeys(k for r in lineage for k in r["scores"]))
    assert table.column_names == [*COLUMNS, *(f"score_{n}" for n in names)]
    assert result.rows == table.num_rows == len(lineage) and result.missing_units == 0 and result.units == 2
    assert all(table.schema.field(f"score_{n}").type == pa.float64() for n in names)
    assert not any(pa.types.is_map(f.type) for f in table.schema)
    rows = table.to_pylist()
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in lineage]  # plan order, unit by unit
    for got, want in zip(rows, lineage, strict=True):
        for col in COLUMNS:
            assert got[col] == want[col], (col, want["doc_id"])
        for n in names:
            assert got[f"score_{n}"] == want["scores"].get(n)  # missing score -> null


def test_a_few_documents_by_hand(job, tmp_path):
    folder, run = job
    rules = {r["doc_id"]: r for r in pq.read_table(export_scores(folder, "quality_rules_v1", tmp_path / "q.parquet")
                                                   .path).to_pylist()}
    want = run.by_id("quality_rules_v1")
    for doc in ("d0", "d2", "d8"):
        assert rules[doc]["score_word_count"] == want[doc]["scores"]["word_count"]
        assert rules[doc]["score_alpha_word_fraction"] == want[doc]["scores"]["alpha_word_fraction"]
        assert rules[doc]["decision"] == want[doc]["decision"] and rules[doc]["reason"] == want[doc]["reason"]
    assert rules["d2"]["decision"] == "drop" and rules["d2"]["reason"] == "quality_rules.too_few_words"
    assert rules["d0"]["score_word_count"] == 72
    dedup = {r["doc_id"]: r for r in pq.read_table(export_scores(folder, "exact_dedup_v1", tmp_path / "e.parquet")
                                                   .path).to_pylist()}
    assert dedup["d1"]["reason"] == "exact_dedup.duplicate" and dedup["d1"]["survivor_id"] == "d0"
    assert dedup["d1"]["cluster_id"] == dedup["d0"]["cluster_id"] is not None
    split = pq.read_table(export_scores(folder, SPLIT, tmp_path / "s.parquet").path).to_pylist()
    created = [r for r in split if r["change"] == "created"]
    assert {r["parent_id"] for r in created} == {"d5", "d6"} and len(created) == 4
    # Score names differ between rows of one stage: the source has paragraphs, a created doc not.
    assert all(r["score_paragraphs"] is None for r in created)
    assert next(r for r in split if r["doc_id"] == "d5")["score_paragraphs"] == 2


def test_struct_format(job, tmp_path):
    folder, run = job
    table = pq.read_table(export_scores(folder, "2", tmp_path / "x.parquet", "struct").path)
    assert table.column_names == [*COLUMNS, "scores"]
    assert pa.types.is_struct(table.schema.field("scores").type)
    assert table.schema.metadata[b"curate.stage"] == b"exact_dedup_v1"
    want = run.by_id("exact_dedup_v1")
    for row in table.to_pylist():
        assert row["scores"] == {"group_size": want[row["doc_id"]]["scores"]["group_size"]}


def test_readers_pyarrow_and_pandas(job, tmp_path):
    folder, run = job
    path = export_scores(folder, "quality_rules_v1", tmp_path / "q.parquet").path
    struct = export_scores(folder, "quality_rules_v1", tmp_path / "qs.parquet", "struct").path
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(path)
    want = run.by_id("quality_rules_v1")
    assert len(frame) == len(want)
    row = frame.set_index("doc_id").loc["d0"]
    assert row["score_word_count"] == want["d0"]["scores"]["word_count"] and row["decision"] == "keep"
    assert math.isclose(pd.read_parquet(struct).set_index("doc_id").loc["d2", "scores"]["mean_word_length"],
                        want["d2"]["scores"]["mean_word_length"])


@pytest.mark.parametrize("fmt", ["wide", "struct"])
def test_loads_with_hugging_face_datasets(job, tmp_path, fmt):
    folder, run = job
    path = export_scores(folder, "quality_rules_v1", tmp_path / "q.parquet", fmt).path
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ValueError, match="map"):  # the reason this export exists
        datasets.Dataset.from_parquet(str(folder / "stages" / "03-quality_rules_v1" / "decisions" / "*.parquet"),
                                      cache_dir=str(tmp_path / "hf-raw"))
    ds = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf"))
    want = run.by_id("quality_rules_v1")
    assert ds.num_rows == len(want)
    for row in ds:
        scores = want[row["doc_id"]]["scores"]
        got = {k.removeprefix("score_"): v for k, v in row.items() if k.startswith("score_")} if fmt == "wide" \
            else row["scores"]
        assert got == scores and row["decision"] == want[row["doc_id"]]["decision"]


def test_unfinished_job_exports_the_finished_units(job, tmp_path):
    folder, _ = job
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "stages" / "03-quality_rules_v1" / "decisions" / "00000-docs.000000005.parquet").unlink()
    result = export_scores(partial, "03-quality_rules_v1", tmp_path / "p.parquet")
    assert result.missing_units == 1 and result.units == 2
    assert {r["doc_id"] for r in pq.read_table(result.path).to_pylist()} <= {f"d{i}" for i in range(5)}


def test_errors_name_the_problem(job, tmp_path):
    folder, _ = job
    with pytest.raises(ExportError, match=r"no stage 'nope' \(stages: 0:input_v1, 1:split"):
        export_scores(folder, "nope", tmp_path / "x.parquet")
    with pytest.raises(ExportError, match="not a curate job folder"):
        export_scores(tmp_path, "input_v1", tmp_path / "x.parquet")
    with pytest.raises(ExportError, match="format 'csv'"):
        export_scores(folder, "input_v1", tmp_path / "x.parquet", "csv")
    assert not (tmp_path / "x.parquet").exists()
