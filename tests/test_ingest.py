import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, needs_shared

from workers.ingest import ingest
from workers.shards import InputError


def write_jsonl(path, records, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read_all(out):
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def test_jsonl_gz_to_shards_of_chosen_size_with_derived_ids(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl.gz", [{"text": f"doc {i}", "n": i} for i in range(25)], gz=True)
    res = ingest([str(src)], tmp_path / "out", shard_rows=10)
    assert [f["rows"] for f in res.files] == [10, 10, 5] and res.rows == 25 and res.derived_ids
    t = read_all(tmp_path / "out")
    assert t["id"].to_pylist()[:2] == ["docs:0", "docs:1"]
    assert t["n"].type == pa.int64() and t["text"][24].as_py() == "doc 24"
    # Deterministic: a second ingest produces byte-identical shards.
    again = ingest([str(src)], tmp_path / "out2", shard_rows=10)
    assert [f["sha256"] for f in again.files] == [f["sha256"] for f in res.files]


def test_parquet_with_other_column_names(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc_id": [7, 8], "contents": ["a b", None]}), src)
    ingest([str(src)], tmp_path / "out", text_field="contents", id_field="doc_id")
    t = read_all(tmp_path / "out")
    assert t.column_names == ["id", "text"]
    assert t["id"].to_pylist() == ["7", "8"] and t["text"].to_pylist() == ["a b", None]  # null kept, not lost


def test_mixed_and_nested_fields_become_json_text(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "text": "x", "meta": {"k": 1}, "v": 1},
                                             {"id": "b", "text": "y", "meta": None, "v": "two"}])
    ingest([str(src)], tmp_path / "out")
    t = read_all(tmp_path / "out")
    assert t["meta"].to_pylist() == ['{"k": 1}', None] and t["v"].to_pylist() == ["1", '"two"']


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"bad.jsonl:2: not valid UTF-8 \(byte 0xe9 at offset 13\)"),
        (b'{"body": "x"}\n', r"bad.jsonl:1: no field 'text' \(fields: body\)"),
        (b'{"text": 42}\n', r"bad.jsonl:1: field 'text' is int, expected a string"),
        (b'[1, 2]\n', r"bad.jsonl:1: expected a JSON object, got list"),
        (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"bad.jsonl:2: duplicate id 'a' \(first seen at"),
    ],
)
def test_bad_records_are_named_and_leave_no_shard(tmp_path, content, message):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    with pytest.raises(InputError, match=message):
        ingest([str(src)], tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_refuses_to_mix_with_existing_shards(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    ingest([str(src)], tmp_path / "out")
    with pytest.raises(InputError, match="already holds 1 shards"):
        ingest([str(src)], tmp_path / "out")
    assert ingest([str(src)], tmp_path / "out", overwrite=True).rows == 1


def test_missing_input_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.jsonl: no such file"):
        ingest([str(tmp_path / "nothing.jsonl")], tmp_path / "out")


SHARED_FILES = sorted(
    p for p in (list(SHARED_DATA.glob("web/*")) + list(SHARED_DATA.glob("quality/*"))
                + list(SHARED_DATA.glob("debian/*")))
) if SHARED_DATA.exists() else []
EXPECTED_ROWS = {"combined_web_pool.parquet": 1907, "manpages_rendered.jsonl.gz": 4408,
                 "copyright_license_stanzas_labeled.jsonl.gz": 1710, "common-licenses": 17,
                 "olmo_c4-sample.00000-of-00001.json.gz": 1000, "dolma_sample-0000.warc.gz": 22,
                 "cc_whirlwind.warc.wet.gz": 1, "wikitext-2_valid_articles.jsonl": 60}


@needs_shared(SHARED_DATA)
@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.name)
def test_every_shared_file_ingests(tmp_path, path):
    kwargs = {"text_field": "contents", "id_field": "doc_id"} if path.name == "dpk_hap_web50.parquet" else {}
    res = ingest([str(path)], tmp_path / "out", shard_rows=1000, **kwargs)
    t = read_all(tmp_path / "out")
    assert t.num_rows == res.rows > 0
    assert len(set(t["id"].to_pylist())) == t.num_rows
    if path.name in EXPECTED_ROWS:
        assert res.rows == EXPECTED_ROWS[path.name]
