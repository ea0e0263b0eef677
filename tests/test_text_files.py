"""Text files a stage or benchmark reads (calibration sets, eval sets, family sources):
bad records are errors that name the place, never skipped in silence."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.text_files import TextFileError, read_texts


def test_jsonl_texts_with_a_where_filter_and_blank_texts_left_out(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "one", "lang": "en"}\n\n{"text": "  ", "lang": "en"}\n{"text": "eins", "lang": "de"}\n')
    assert read_texts(path) == ["one", "eins"]
    assert read_texts(path, where={"lang": "de"}) == ["eins"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "a"}\n{"body": "b"}\n', r"a\.jsonl:2: 'text' is missing"),
    ('{"text": "a"}\n{"text": null}\n', r"a\.jsonl:2: 'text' is NoneType, not text"),
    ('{"text": 3}\n', r"a\.jsonl:1: 'text' is int, not text"),
    ('{"text": "a"}\nnot json\n', r"a\.jsonl:2: not JSON"),
    ('{"text": ""}\n', r"holds no text in field 'text'"),
])
def test_bad_records_name_the_line(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(TextFileError, match=message):
        read_texts(path)


def test_a_bad_byte_names_its_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(TextFileError, match=r"a\.jsonl:2: not valid UTF-8 \(byte 0xe9 at offset 13\)"):
        read_texts(path)


def test_parquet_missing_column_and_records_filtered_out_before_the_check(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x", None], "lang": ["en", "de"]}), path)
    assert read_texts(path, where={"lang": "en"}) == ["x"]  # the null row is not selected
    with pytest.raises(TextFileError, match=r"a\.parquet row 1: 'text' is NoneType"):
        read_texts(path)
    with pytest.raises(TextFileError, match=r"has no column 'body'"):
        read_texts(path, "body")
