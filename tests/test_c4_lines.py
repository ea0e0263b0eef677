"""c4_lines_v1: C4's line-level cleaning, rule by rule on inline documents, through the
in-process runner; `curate why` on an edited document; the web pool when present."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from conftest import WEB_POOL, needs_shared, run_cli, write_shard

from filters.c4_lines import C4LinesParams, C4LinesV1, clean
from workers.local import run_stage

S = "This line is a complete sentence that ends well."  # 9 words, terminal punctuation
FIVE = " ".join([S] * 5)  # one line, five sentences


def test_each_line_rule_removes_and_counts_its_lines():
    text = "\n".join([
        FIVE,
        "Menu Home About",  # no terminal punctuation
        "Trailing dots are not an end...",  # ellipsis
        "Too short.",  # fewer than 3 words
        "Please enable JavaScript to view this page.",
        "By using this site you agree to our Terms of Use.",
        "We use cookies to improve your experience.",
        "A word " + "x" * 1001 + " that is far too long.",
        "   This line cites a source and ends well.[1][citation needed]   ",  # citations go, the line stays
    ])
    kept, reason, counts = clean(text, C4LinesParams())
    assert reason is None and kept == FIVE + "\nThis line cites a source and ends well."
    assert {k: counts[k] for k in ("no_terminal_punct", "too_few_words", "javascript", "policy", "too_long_word")} \
        == {"no_terminal_punct": 2, "too_few_words": 1, "javascript": 1, "policy": 2, "too_long_word": 1}
    assert (counts["lines"], counts["kept_lines"], counts["sentences"]) == (9, 2, 6)


def test_document_rules_and_their_order():
    assert clean(FIVE + "\nLorem ipsum dolor sit amet, consectetur.", C4LinesParams())[1] == "c4_lines.lorem_ipsum"
    assert clean(FIVE + "\nfunction f() { return 1; }.", C4LinesParams())[1] == "c4_lines.curly_bracket"
    # A brace on a line that already fails an earlier rule only removes that line (as in C4).
    kept, reason, counts = clean(FIVE + "\nvar x = {a: 1}", C4LinesParams())
    assert reason is None and kept == FIVE and counts["no_terminal_punct"] == 1
    assert clean(S + "\n" + S, C4LinesParams())[1] == "c4_lines.too_few_sentences"
    assert clean("menu\nhome", C4LinesParams(min_sentences=0))[1] == "c4_lines.no_lines_left"
    assert clean(S + "\n" + S, C4LinesParams(min_sentences=2))[0] == S + "\n" + S


def test_sentences_are_counted_by_punkt_not_by_periods():
    line = "Dr. Smith met Mr. Jones at 3.30 p.m. on Jan. 5th. They talked."
    assert clean(line, C4LinesParams(min_sentences=0))[2]["sentences"] == 0  # counting off
    assert clean(line, C4LinesParams(min_sentences=1))[2]["sentences"] == 2


def test_the_stage_keeps_edits_and_drops_with_lineage():
    docs = pa.table({"id": ["clean", "edited", "lorem", "short"],
                     "text": [FIVE, FIVE + "\nClick here\nWe use cookies on this site.", FIVE + "\nLorem ipsum dolor.",
                              S]})
    run = run_stage(C4LinesV1(), docs)
    d = run.by_id("c4_lines_v1")
    assert (d["clean"]["decision"], d["clean"]["change"]) == ("keep", None)
    assert (d["edited"]["decision"], d["edited"]["change"]) == ("keep", "edited")
    scores = d["edited"]["scores"]
    assert scores["chars_before"] == len(docs["text"][1].as_py()) and scores["chars_after"] == len(FIVE)
    assert scores["removed_no_terminal_punct"] == 1 and scores["removed_policy"] == 1
    assert (d["lorem"]["decision"], d["lorem"]["reason"]) == ("drop", "c4_lines.lorem_ipsum")
    assert d["short"]["reason"] == "c4_lines.too_few_sentences"
    assert run.output.to_pylist() == [{"id": "clean", "text": FIVE}, {"id": "edited", "text": FIVE}]
    f = run.funnel[1]
    assert (f["docs_in"], f["kept"], f["edited"], f["dropped"]) == (4, 2, 1, 2)


@pytest.mark.usefixtures("ray_cluster")
def test_curate_why_shows_the_characters_before_and_after(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [FIVE + "\nShare on Facebook\nWe use cookies here, sorry."],
                ids=["page"])
    spec = tmp_path / "c4.json"
    spec.write_text(json.dumps({"name": "c4", "inputs": [str(tmp_path / "in" / "*.parquet")],
                                "output": str(tmp_path / "out"), "stages": [{"stage": "c4_lines_v1"}]}))
    assert "(edited 1)" in run_cli("run", str(spec), "--no-progress").stdout
    why = run_cli("why", "c4", "page").stdout
    before = len(FIVE + "\nShare on Facebook\nWe use cookies here, sorry.")
    assert f"edited: {before} -> {len(FIVE)} chars" in why and "removed_policy=1" in why


@needs_shared(WEB_POOL)
def test_web_pool_lines_removed_per_reason_add_up():
    import pyarrow.parquet as pq

    docs = pq.read_table(WEB_POOL, columns=["id", "text"])
    run = run_stage(C4LinesV1(), docs)
    rows = run.decisions("c4_lines_v1")
    assert len(rows) == docs.num_rows - 27  # the 27 empty documents stop at input_v1
    for r in rows:
        s = r["scores"]
        removed = sum(s[f"removed_{k}"] for k in ("too_long_word", "no_terminal_punct", "too_few_words",
                                                  "javascript", "policy"))
        if r["reason"] in (None, "c4_lines.too_few_sentences"):  # the whole document was read
            assert s["lines"] == removed + s["kept_lines"]
    by_reason = {k: sum(r["scores"][f"removed_{k}"] for r in rows) for k in ("no_terminal_punct", "too_few_words",
                                                                              "javascript", "policy")}
    assert all(v > 0 for v in by_reason.values()), by_reason
    out = {r["id"]: r["text"] for r in run.output.to_pylist()}
    source = dict(zip(docs["id"].to_pylist(), docs["text"].to_pylist(), strict=True))
    for doc_id, text in out.items():  # every kept line is a (stripped) line of the source
        lines = {line.strip() for line in source[doc_id].splitlines()}
        assert all(line in lines or "[" in source[doc_id] for line in text.split("\n"))
