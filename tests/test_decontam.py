"""decontam_v1: eval-set n-gram overlap found, attributed, and dropped, cut or flagged,
through the real runner (job folder, fits, lineage), plus its report and bad eval sets."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from conftest import run_cli

from filters.contamination import word_spans
from filters.contamination import words as index_words
from filters.decontam import DecontamV1
from filters.text_files import TextFileError
from workers.contamination_report import contamination_reports
from workers.job_folder import JobFolder
from workers.local import run_stages

RNG = random.Random(7)
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu", "va", "ze") for b in range(300)]


def words(k: int) -> str:
    return " ".join(RNG.choice(VOCAB) for _ in range(k))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 eval items (question + answer); 120 documents, every 6th holding one question
    (20 words: 8 13-grams of the item's 13) in its middle, in upper case with punctuation."""
    root = tmp_path_factory.mktemp("decontam")
    items = [{"qid": f"q{i}", "question": words(20), "answer": words(5)} for i in range(40)]
    eval_file = root / "qa.jsonl"
    eval_file.write_text("".join(json.dumps(it) + "\n" for it in items))
    texts, planted = [], {}
    for i in range(120):
        text = words(250)
        if i % 6 == 0:
            q = items[i // 6]["question"]
            mid = text.index(" ", len(text) // 2)
            passage = q.upper().replace(" ", ", ", 1) + "."
            text = f"{text[:mid]} {passage} {text[mid + 1:]}"
            planted[f"d{i}"] = (f"q{i // 6}", text.index(passage), text.index(passage) + len(passage))
        texts.append(text)
    table = pa.table({"id": [f"d{i}" for i in range(120)], "text": texts})
    sets = [{"name": "qa", "path": str(eval_file), "fields": ["question", "answer"], "id_field": "qid"}]
    return {"root": root, "table": table, "planted": planted, "sets": sets, "items": items}


def run(corpus, tmp_path, **params):
    return run_stages([("decontam_v1", {"eval_sets": corpus["sets"], **params})], corpus["table"], unit_rows=40,
                      workdir=tmp_path / "job")


def test_words_match_across_tokenisation_and_case():
    same = ["don", "t", "pay", "1", "000", "for", "café", "au", "lait", "now"]
    assert index_words("Don't pay $1,000 for Café-au-lait_now!") == same
    assert index_words("don 't pay 1 @,@ 000 for café @-@ au @-@ lait now") == same
    assert index_words("DON'T PAY 1,000 FOR CAFE-AU-LAIT NOW") == [w.replace("é", "e") for w in same]  # ASCII
    text = "İstanbul, 2024: ok"
    assert [text[s:e] for s, e in word_spans(text)] == ["İstanbul", "2024", "ok"]
    assert len(word_spans(text)) == len(index_words(text))


def test_drop_removes_exactly_the_planted_documents_and_names_the_item(corpus, tmp_path):
    result = run(corpus, tmp_path)
    rows = {r["doc_id"]: r for r in result.decisions("decontam_v1")}
    dropped = {d for d, r in rows.items() if r["decision"] == "drop"}
    assert dropped == set(corpus["planted"])
    for doc_id, (item, _, _) in corpus["planted"].items():
        r = rows[doc_id]
        assert r["reason"] == "decontam.eval_overlap"
        assert json.loads(r["detail"]) == {"eval_set": "qa", "eval_item": item}
        assert r["scores"]["matched_ngrams"] == 8 and r["scores"]["item_overlap"] == pytest.approx(8 / 13)
    clean = rows["d1"]
    assert clean["decision"] == "keep" and clean["scores"]["contaminated"] == 0 and clean["detail"] is None
    assert result.output.num_rows == 120 - len(corpus["planted"])
    [entry] = contamination_reports(JobFolder(tmp_path / "job" / "job"))
    report = entry["report"]
    assert entry["ready"] and entry["action"] == "drop"
    assert report["documents_checked"] == 120 and report["documents_matched"] == len(corpus["planted"])
    assert report["eval_sets"] == [{"name": "qa", "path": corpus["sets"][0]["path"], "items": 40,
                                    "too_short_items": 0, "ngrams": 40 * 13, "items_found": 20, "documents": 20}]
    assert sorted(i["item"] for i in report["items"]) == sorted(item for item, _, _ in corpus["planted"].values())
    assert all(i["documents"] == 1 and i["best_overlap"] == pytest.approx(8 / 13, abs=1e-6) for i in report["items"])


def test_cut_removes_exactly_the_planted_span_and_records_it(corpus, tmp_path):
    result = run(corpus, tmp_path, action="cut", cut_window=0, min_piece_chars=0)
    rows = {r["doc_id"]: r for r in result.decisions("decontam_v1")}
    out = dict(zip(result.output["id"].to_pylist(), result.output["text"].to_pylist(), strict=True))
    texts = dict(zip(corpus["table"]["id"].to_pylist(), corpus["table"]["text"].to_pylist(), strict=True))
    assert len(out) == 120
    for doc_id, (_item, start, end) in corpus["planted"].items():
        r, text = rows[doc_id], texts[doc_id]
        assert r["decision"] == "keep" and r["change"] == "edited"
        # the passage's words go; its final "." is not a word and stays with the text after it
        assert json.loads(r["detail"])["removed_spans"] == [[start, end - 1]]
        assert out[doc_id] == text[:start].strip() + "\n\n" + text[end - 1:].strip()
        assert r["scores"]["removed_chars"] == end - 1 - start and r["scores"]["pieces"] == 2
    assert all(out[d] == texts[d] for d in texts if d not in corpus["planted"])


def test_cut_with_gpt3_defaults_drops_what_is_left_too_short_or_in_too_many_pieces(corpus, tmp_path):
    items = corpus["items"]
    short = f"Intro words here. {items[0]['question']} and a short tail."
    many = " ".join(f"{words(120)} {items[k]['question']}" for k in range(1, 13)) + " " + words(120)
    table = pa.table({"id": ["short", "many", "long"], "text": [short, many, words(200) + " " +
                                                                 items[20]["question"] + " " + words(200)]})
    result = run_stages([("decontam_v1", {"eval_sets": corpus["sets"], "action": "cut"})], table,
                        workdir=tmp_path / "job")
    rows = {r["doc_id"]: r for r in result.decisions("decontam_v1")}
    assert rows["short"]["reason"] == "decontam.nothing_left"
    assert rows["many"]["reason"] == "decontam.too_many_pieces" and rows["many"]["scores"]["pieces"] == 13
    kept = rows["long"]
    assert kept["change"] == "edited" and kept["scores"]["pieces"] == 2
    [[s, e]] = json.loads(kept["detail"])["removed_spans"]
    assert e - s > 400  # the passage plus 200 characters either side


def test_flag_keeps_everything_and_marks_the_contaminated(corpus, tmp_path):
    result = run(corpus, tmp_path, action="flag")
    rows = result.decisions("decontam_v1")
    assert result.output.num_rows == 120 and all(r["decision"] == "keep" and r["change"] is None for r in rows)
    assert {r["doc_id"] for r in rows if r["scores"]["contaminated"] == 1} == set(corpus["planted"])


def test_a_bloom_index_decides_like_the_exact_one_and_its_false_positives_cost_nothing(corpus, tmp_path):
    exact = run(corpus, tmp_path / "exact")
    loose = run(corpus, tmp_path / "bloom", index="bloom", bloom_error_rate=0.2)  # many false hits on purpose
    key = [(r["doc_id"], r["decision"], r["reason"], r["detail"]) for r in exact.decisions("decontam_v1")]
    assert [(r["doc_id"], r["decision"], r["reason"], r["detail"]) for r in loose.decisions("decontam_v1")] == key
    report = contamination_reports(JobFolder(tmp_path / "bloom" / "job" / "job"))[0]["report"]
    assert report["index"] == "bloom" and report["bloom_false_positive_ngrams"] > 100
    index = json.loads(next((tmp_path / "bloom" / "job" / "job").glob("stages/*/artifacts/index.json")).read_text())
    assert 0.1 < index["bloom"]["expected_error_rate"] <= 0.2


def test_min_ngrams_and_common_phrases(corpus, tmp_path):
    result = run(corpus, tmp_path / "nine", min_ngrams=9)  # a planted question holds 8
    assert not [r for r in result.decisions("decontam_v1") if r["decision"] == "drop"]
    common = corpus["items"][39]["question"]  # one eval question in 5 documents: a "common phrase"
    table = pa.table({"id": [f"c{i}" for i in range(6)],
                      "text": [f"{words(30)} {common} {words(30)}" for _ in range(5)] + [words(80)]})
    capped = run_stages([("decontam_v1", {"eval_sets": corpus["sets"], "max_ngram_docs": 4})], table,
                        workdir=tmp_path / "capped")
    assert capped.output.num_rows == 6
    report = contamination_reports(JobFolder(tmp_path / "capped" / "job"))[0]["report"]
    assert report["ignored_frequent_ngrams"] == 8 and report["documents_matched"] == 0
    uncapped = run_stages([("decontam_v1", {"eval_sets": corpus["sets"], "max_ngram_docs": 5})], table)
    assert uncapped.output.num_rows == 1


def test_plain_text_and_parquet_eval_sets(corpus, tmp_path):
    import pyarrow.parquet as pq

    txt = tmp_path / "lines.txt"
    txt.write_text("\n".join(it["question"] for it in corpus["items"][:5]) + "\n\n")
    pq.write_table(pa.table({"q": [it["question"] for it in corpus["items"][5:10]]}), tmp_path / "more.parquet")
    sets = [{"name": "lines", "path": str(txt)}, {"name": "pq", "path": str(tmp_path / "more.parquet"),
                                                  "fields": ["q"]}]
    result = run_stages([("decontam_v1", {"eval_sets": sets})], corpus["table"], workdir=tmp_path / "job")
    details = [json.loads(r["detail"]) for r in result.decisions("decontam_v1") if r["decision"] == "drop"]
    assert sorted((d["eval_set"], d["eval_item"]) for d in details) == \
        [("lines", "0"), ("lines", "1"), ("lines", "2"), ("lines", "3"), ("lines", "4"),
         ("pq", "0"), ("pq", "1"), ("pq", "2"), ("pq", "3"), ("pq", "4")]


def test_bad_eval_sets_are_named(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "a b c", "answer": "d"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(TextFileError, match=r"bad.jsonl:2: eval set 'bad' field 'answer' is missing"):
        DecontamV1({"eval_sets": [{"name": "bad", "path": str(bad), "fields": ["question", "answer"]}],
                    "ngram": 2}).index(None, tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("only five words in here\n")
    with pytest.raises(ValueError, match=r"eval set 'short' .* has no item of 13 words or more \(1 items\)"):
        DecontamV1({"eval_sets": [{"name": "short", "path": str(short)}]}).index(None, tmp_path)
    with pytest.raises(ValueError, match="the name 'qa' is used twice"):
        DecontamV1({"eval_sets": corpus["sets"] * 2})
    with pytest.raises(TextFileError, match="takes no fields"):
        list(DecontamV1({"eval_sets": [{"name": "t", "path": str(short), "fields": ["q"]}]}).index(None, tmp_path))


@pytest.mark.usefixtures("ray_cluster")
def test_curate_run_then_contamination_and_why(corpus, tmp_path):
    """The user's path: a spec run by `curate run` on Ray, the report, and `curate why`."""
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(corpus["table"], tmp_path / "in" / "a.parquet")
    spec = tmp_path / "decontam.json"
    spec.write_text(json.dumps({"name": "dc", "inputs": [str(tmp_path / "in" / "*.parquet")],
                                "output": str(tmp_path / "out"),
                                "stages": [{"stage": "decontam_v1", "params": {"eval_sets": corpus["sets"]}}]}))
    assert "100 of 120 docs kept" in run_cli("run", str(spec), "--no-progress").stdout
    table = run_cli("contamination", "dc").stdout
    assert "20 of 120 documents hold a 13-gram of an eval item (exact index)" in table
    assert "qa                         40          0      20         20" in table
    assert len(json.loads(run_cli("contamination", "dc", "--json").stdout)[0]["report"]["items"]) == 20
    why = run_cli("why", "dc", "d0").stdout
    assert "DROPPED at decontam_v1: decontam.eval_overlap" in why
    assert '"eval_item": "q0"' in why and '"eval_set": "qa"' in why and "matched_ngrams=8" in why
    run_stages(["exact_dedup_v1"], corpus["table"], workdir=tmp_path / "plain")
    failed = run_cli("contamination", str(tmp_path / "plain" / "job"), check=False)
    assert failed.returncode == 1 and "has no decontam_v1 stage" in failed.stderr
