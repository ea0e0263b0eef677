"""Every bad input gets a clear error naming the file, row or field, and leaves no
output that looks complete."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, write_shard

from workers.job import JobError, run_job
from workers.shards import InputError
from workers.spec import parse_spec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def run(tmp_path, pattern="in/*.parquet", **extra):
    spec = parse_spec({"name": "bad", "inputs": [str(tmp_path / pattern)], "output": str(tmp_path / "out"),
                       "stages": [{"stage": "quality_rules_v1"}], **extra})
    return run_job(spec, progress=False)


def assert_nothing_complete(tmp_path):
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp-*"))


def test_corrupt_parquet_is_named_before_anything_runs(tmp_path):
    write_shard(tmp_path / "in" / "good.parquet", [GOOD], ids=["g"])
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match=r"broken.parquet: not a readable Parquet file"):
        run(tmp_path)
    assert not (tmp_path / "out" / "stages").exists()
    assert_nothing_complete(tmp_path)


def test_truncated_parquet_is_named(tmp_path):
    path = write_shard(tmp_path / "in" / "cut.parquet", [GOOD] * 50, ids=[str(i) for i in range(50)])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match=r"cut.parquet: not a readable Parquet file"):
        run(tmp_path)


def test_missing_text_column_names_the_columns(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD], ids=["a"])
    with pytest.raises(InputError, match=r"a.parquet: text column 'body' not found \(columns: id, text\); "
                                         r"set columns.text in the spec"):
        run(tmp_path, columns={"text": "body"})


@pytest.mark.parametrize("values, shown", [([1, 2], "int64"), ([["a"], ["b"]], "list<element: string>"),
                                           ([{"t": "a"}, {"t": "b"}], "struct<t: string>")])
def test_non_string_or_nested_text_column_is_rejected(tmp_path, values, shown):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": values}), tmp_path / "in" / "odd.parquet")
    with pytest.raises(InputError, match=rf"odd.parquet: text column 'text' has type {re.escape(shown)}; "
                                         "expected string"):
        run(tmp_path)


def test_a_column_typed_differently_in_two_shards_names_both(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [GOOD], "lang": ["en"], "n": pa.array([1], pa.int32())}),
                   tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": pa.array([GOOD], pa.large_string()), "lang": [None],
                             "n": pa.array([2], pa.int64())}), tmp_path / "in" / "b.parquet")
    assert run(tmp_path)["output"]["rows"] == 2  # large_string, an all-null column, int32/int64: compatible
    pq.write_table(pa.table({"id": ["c"], "text": [GOOD], "lang": [3]}), tmp_path / "in" / "c.parquet")
    with pytest.raises(InputError, match=r"c.parquet: column 'lang' has type int64 here but string in "
                                         r".*a.parquet; the shards of one job must agree"):
        run(tmp_path, output=str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "stages").exists()


def test_huge_and_tiny_documents_are_all_accounted_for(tmp_path):
    """A single 50 MB document and 100,000 one-character documents: every input row is in
    the output or in lineage with its drop reason."""
    big = ("word " * 10_000_000)[:50_000_000]
    write_shard(tmp_path / "in" / "big.parquet", [big, GOOD], ids=["big", "good"])
    write_shard(tmp_path / "in" / "tiny.parquet", ["x"] * 100_000, ids=[f"t{i}" for i in range(100_000)])
    manifest = run(tmp_path)
    rules = manifest["funnel"][1]
    assert manifest["input"]["rows"] == rules["docs_in"] == 100_002
    assert rules["kept"] == manifest["output"]["rows"] == 1
    assert rules["reasons"] == {"quality_rules.too_few_words": 100_000, "quality_rules.too_many_words": 1}


def test_invalid_utf8_fails_at_the_row_and_leaves_no_complete_output(tmp_path):
    write_shard(tmp_path / "in" / "a-ok.parquet", [GOOD], ids=["ok"])
    raw = pa.array([GOOD.encode(), b"caf\xe9 au lait", b"fine"], pa.binary()).view(pa.string())
    (tmp_path / "in").mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": ["x0", "x1", "x2"], "text": raw}), tmp_path / "in" / "b-latin1.parquet")
    with pytest.raises(JobError, match=r"b-latin1.parquet row 1: text is not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        run(tmp_path)
    assert_nothing_complete(tmp_path)
    assert not (tmp_path / "out" / "data" / "00001-b-latin1.parquet").exists()


def test_empty_shard_is_an_error_unless_allowed(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD], ids=["a"])
    write_shard(tmp_path / "in" / "empty.parquet", [], ids=[])
    with pytest.raises(InputError, match=r"empty.parquet: shard has 0 rows; remove it or set "
                                         r"execution.allow_empty_shards: true"):
        run(tmp_path)
    manifest = run(tmp_path, execution={"allow_empty_shards": True})
    assert [f["rows"] for f in manifest["files"]] == [1, 0]


def test_duplicate_ids_are_reported_with_both_places_before_the_job_starts(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD, GOOD + " x"], ids=["one", "dup"])
    write_shard(tmp_path / "in" / "b.parquet", ["y", "z", GOOD], ids=["two", "three", "dup"])
    with pytest.raises(InputError, match=r"duplicate document id 'dup' \(1 duplicated ids in all\): found in "
                                         r".*a.parquet row 1 and .*b.parquet row 2"):
        run(tmp_path)
    assert not (tmp_path / "out" / "stages").exists()


def test_null_id_is_named(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [GOOD, GOOD], ids=["a", None])
    with pytest.raises(InputError, match=r"a.parquet row 1: id column 'id' is null"):
        run(tmp_path)


def test_null_and_blank_texts_are_kept_in_lineage_not_lost(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [None, "", " \t\n", GOOD], ids=["n", "e", "w", "g"])
    manifest = run(tmp_path)
    inp = manifest["funnel"][0]
    assert inp["reasons"] == {"input.null_text": 1, "input.empty_text": 2}
    d = pq.read_table(tmp_path / "out" / "stages" / "00-input_v1" / "decisions" / "00000-a.000000000.parquet")
    assert d["doc_id"].to_pylist() == ["n", "e", "w", "g"]
    assert d["reason"].to_pylist() == ["input.null_text", "input.empty_text", "input.empty_text", None]


def test_missing_ids_are_derived_deterministically(tmp_path):
    write_shard(tmp_path / "in" / "noids.parquet", [GOOD, "short"])
    manifest = run(tmp_path)
    out = pq.read_table(tmp_path / "out" / manifest["files"][0]["path"])
    assert out["id"].to_pylist() == ["noids:0"]
    d = pq.read_table(tmp_path / "out" / "stages" / "01-quality_rules_v1" / "decisions" /
                      "00000-noids.000000000.parquet")
    assert d["doc_id"].to_pylist() == ["noids:0", "noids:1"]


def test_input_glob_matching_nothing(tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]: '.*nothing/\*.parquet' matches no file"):
        run(tmp_path, pattern="nothing/*.parquet")
