import gzip
import json
import re

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, needs_shared

from workers import atomic
from workers import ingest as ingest_module
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


def _warc_record(i: int, body: str) -> bytes:
    """One WARC response record of an HTML page, as its own gzip member (as crawlers write)."""
    http = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + f"<html><body><p>{body}</p></body></html>".encode())
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://example.com/{i}\r\n"
            f"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{i:08d}-0000-0000-0000-000000000000>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return gzip.compress(head + http + b"\r\n\r\n")


def test_a_warc_with_a_broken_gzip_member_is_named_and_ingests_nothing(tmp_path):
    body = "The history of the city is long and varied, and many of its buildings still stand today. " * 4
    members = [_warc_record(i, body + str(i)) for i in range(5)]
    (tmp_path / "good.warc.gz").write_bytes(b"".join(members))
    assert ingest([str(tmp_path / "good.warc.gz")], tmp_path / "good").rows == 5
    broken = bytearray(members[2])
    broken[30:60] = b"\0" * 30  # inside the third member's deflate stream
    (tmp_path / "bad.warc.gz").write_bytes(b"".join(members[:2]) + bytes(broken) + b"".join(members[3:]))
    with pytest.raises(InputError, match=r"bad.warc.gz: cannot read WARC after 2 records \(the last began at byte "
                                         rf"{len(members[0]):,}\): .*nothing was ingested"):
        ingest([str(tmp_path / "bad.warc.gz")], tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet"))  # no shard that looks complete


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


# --- The Arrow column path: one schema per ingest, duplicate ids, file:line after many good records ---


def schemas(out):
    return [pq.read_schema(p) for p in sorted(out.glob("part-*.parquet"))]


def test_shards_of_one_ingest_share_one_schema(tmp_path):
    # "score" is null in every record of the first shard and an int later; "late" first appears in
    # the last shard; "ratio" is int in one shard and float in another; "meta" is a string in one
    # shard and an object in another, so it is JSON text in every shard.
    records = []
    for i in range(25):
        r = {"text": f"doc {i}", "score": None if i < 10 else i, "ratio": i if i < 20 else i + 0.5,
             "meta": "plain" if i < 10 else {"k": i}}
        if i >= 20:
            r["late"] = True
        records.append(r)
    src = write_jsonl(tmp_path / "docs.jsonl", records)
    res = ingest([str(src)], tmp_path / "out", shard_rows=10)
    assert [f["rows"] for f in res.files] == [10, 10, 5]
    table = ds.dataset(tmp_path / "out").to_table()  # a multi-file reader over the folder
    assert table.num_rows == 25
    found = schemas(tmp_path / "out")
    assert all(s.equals(found[0]) for s in found)
    assert found[0].field("score").type == pa.int64() and found[0].field("ratio").type == pa.float64()
    assert found[0].field("late").type == pa.bool_() and found[0].field("meta").type == pa.string()
    t = read_all(tmp_path / "out")
    assert t["score"].to_pylist() == [None] * 10 + list(range(10, 25))
    assert t["ratio"].to_pylist() == [float(i) for i in range(20)] + [i + 0.5 for i in range(20, 25)]
    assert t["late"].to_pylist() == [None] * 20 + [True] * 5
    assert t["meta"].to_pylist() == ['"plain"'] * 10 + [json.dumps({"k": i}) for i in range(10, 25)]
    # The manifest describes the shards as rewritten.
    manifest = json.loads((tmp_path / "out" / "_ingest.json").read_text())
    assert [f["sha256"] for f in manifest["files"]] == [
        atomic.sha256_file(p) for p in sorted((tmp_path / "out").glob("part-*.parquet"))]


def test_all_null_field_in_the_first_shard_is_typed_from_later_shards(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"d{i}", "n": None if i < 40 else i} for i in range(100)])
    ingest([str(src)], tmp_path / "out", shard_rows=20)
    assert ds.dataset(tmp_path / "out").to_table()["n"].type == pa.int64()
    assert [s.field("n").type for s in schemas(tmp_path / "out")] == [pa.int64()] * 5


@pytest.mark.parametrize("ids_in_memory", [True, False], ids=["arrow-in-memory", "duckdb-over-shards"])
def test_duplicate_id_in_a_multi_shard_ingest_names_both_lines(tmp_path, monkeypatch, ids_in_memory):
    if not ids_in_memory:  # as an ingest with more ids than ID_MEMORY_BYTES does
        monkeypatch.setattr(ingest_module, "ID_MEMORY_BYTES", 0)
    records = [{"id": f"d{i}", "text": f"doc {i}"} for i in range(30_000)]
    records[25_000] = {"id": "d3", "text": "again"}
    src = write_jsonl(tmp_path / "docs.jsonl", records)
    with pytest.raises(InputError) as err:
        ingest([str(src)], tmp_path / "out", shard_rows=1000)
    assert str(err.value) == f"{src}:25001: duplicate id 'd3' (first seen at {src}:4)"
    assert not list((tmp_path / "out").iterdir())  # shards already written are removed, nothing else left


@pytest.mark.parametrize("ids_in_memory", [True, False], ids=["arrow-in-memory", "duckdb-over-shards"])
def test_duplicate_id_across_parquet_files_names_both_rows(tmp_path, monkeypatch, ids_in_memory):
    if not ids_in_memory:
        monkeypatch.setattr(ingest_module, "ID_MEMORY_BYTES", 0)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": [f"a{i}" for i in range(5000)], "text": ["x"] * 5000}), a)
    pq.write_table(pa.table({"id": ["b0", "b1", "a4321"], "text": ["y"] * 3}), b)
    with pytest.raises(InputError) as err:
        ingest([str(a), str(b)], tmp_path / "out", shard_rows=700)
    assert str(err.value) == f"{b} row 2: duplicate id 'a4321' (first seen at {a} row 4321)"
    # Ids derived from two files of the same stem collide too, as before.
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    one, two = (write_jsonl(tmp_path / d / "docs.jsonl", [{"text": "t"}]) for d in "xy")
    with pytest.raises(InputError, match=r"y/docs.jsonl:1: duplicate id 'docs:0' \(first seen at .*x/docs.jsonl:1\)"):
        ingest([str(one), str(two)], tmp_path / "out2")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"text": "cut', r"not valid JSON \(Invalid control character at at column 14\)"),
        (b'{"text": "caf\xe9"}', r"not valid UTF-8 \(byte 0xe9 at offset 13\)"),
        (b'["a list"]', r"expected a JSON object, got list"),
        (b'{"body": "x"}', r"no field 'text' \(fields: body\)"),
        (b'{"text": 7}', r"field 'text' is int, expected a string"),
        (b'{"text": "a"} {"text": "b"}', r"not valid JSON \(Extra data at column 15\)"),
        (b'\xef\xbb\xbf{"text": "bom"}', r"not valid JSON \(Unexpected UTF-8 BOM"),
        (b'{"text": "x", "id": 1.5}', r"field 'id' is float, expected string or int"),
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["jsonl", "jsonl.gz"])
def test_bad_record_after_many_good_ones_is_named_by_file_and_line(tmp_path, monkeypatch, bad, message, gz):
    # Small chunks, so the bad record is far into the file's chunks; a blank line, so that line
    # numbers and record numbers differ.
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 64 << 10)
    good = b"".join(json.dumps({"text": f"doc {i}", "n": i}).encode() + b"\n" for i in range(20_000))
    data = good + b"\n" + bad + b"\n" + good[:1000]
    src = tmp_path / ("docs.jsonl.gz" if gz else "docs.jsonl")
    src.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(InputError, match=rf"^{re.escape(str(src))}:20002: {message}"):
        ingest([str(src)], tmp_path / "out", shard_rows=5000)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_field_whose_type_changes_late_becomes_json_text(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 16 << 10)
    values = list(range(3000)) + ["three thousand", None, True]
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": "t", "v": v} for v in values])
    ingest([str(src)], tmp_path / "out")
    assert read_all(tmp_path / "out")["v"].to_pylist() == [None if v is None else json.dumps(v) for v in values]


def test_gz_input_read_by_chunks_keeps_every_record_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 4 << 10)
    records = []
    for i in range(2000):
        r = {"text": None if i % 97 == 5 else f"doc {i} caf\u00e9", "date": f"2024-01-{i % 28 + 1:02d}",
             "when": "2024-01-02T03:04:05Z", "meta": {"url": f"u{i}"} if i % 3 else {"url": None, "lang": "en"},
             "tags": [i, 2.5] if i % 5 == 0 else [i]}
        if i % 10:
            r["id"] = f"id-{i}"
        records.append(r)
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records)]
    lines.insert(700, "")  # a blank line, and CRLF line ends
    src = tmp_path / "web.jsonl.gz"
    src.write_bytes(gzip.compress(("\r\n".join(lines) + "\r\n").encode()))
    res = ingest([str(src)], tmp_path / "out", shard_rows=300)
    t = read_all(tmp_path / "out")
    assert res.rows == t.num_rows == 2000 and res.derived_ids
    assert t["id"].to_pylist() == [f"id-{i}" if i % 10 else f"web:{i}" for i in range(2000)]
    assert t["text"].to_pylist() == [r["text"] for r in records]  # null texts kept
    assert t["date"].to_pylist() == [r["date"] for r in records]  # strings, not timestamps
    assert t["when"].type == pa.string() and t["when"][0].as_py() == "2024-01-02T03:04:05Z"
    assert t["meta"].to_pylist() == [json.dumps(r["meta"], sort_keys=True) for r in records]  # keys as written
    assert t["tags"].to_pylist() == [json.dumps(r["tags"]) for r in records]  # 2.5 does not make ints floats


def test_truncated_gz_is_named_as_before(tmp_path):
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(gzip.compress(b'{"text": "x"}\n' * 5000)[:-30])
    with pytest.raises(InputError, match=r"cut.jsonl.gz: cannot read \(Compressed file ended before the end-of-stream"):
        ingest([str(src)], tmp_path / "out")


def test_shard_mb_closes_a_shard_at_the_record_that_reaches_it(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": "x" * 1024} for _ in range(50)])
    res = ingest([str(src)], tmp_path / "out", shard_mb=0.01)  # 10485 bytes: the 11th KiB text reaches it
    assert [f["rows"] for f in res.files] == [11, 11, 11, 11, 6]
