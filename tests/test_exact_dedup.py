import pyarrow as pa
import pytest

from filters.base import Fitted
from filters.exact_dedup import ExactDedupParams, ExactDedupV1, normalise
from workers.fit_view import TableScoreView
from workers.local import run_stage


def corpus(texts):
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts})


def score_fit_select(stage, texts, order=None):
    docs = corpus(texts)
    scores = stage.score(docs)
    full = scores.append_column("id", docs["id"]).append_column(
        "order", pa.array(order or list(range(len(texts))), pa.int64())
    )
    with TableScoreView(full) as view:
        fitted = stage.fit(view, None)
    return stage.select(full, Fitted(fitted))


def test_normalisation_is_documented_behaviour():
    p = ExactDedupParams()
    assert normalise("  Hello\t\tWORLD \n", p) == "hello world"
    assert normalise("Cafe\u0301", p) == normalise("Café", p)  # NFC joins the combining accent
    assert normalise("A  B", ExactDedupParams(collapse_whitespace=False, lowercase=False)) == "A  B"


def test_one_survivor_per_group_first_in_input_order():
    rows = run_stage(ExactDedupV1(), corpus(["Same text here", "other", "same  TEXT here", "SAME text here\n"]),
                     unit_rows=2).decisions("exact_dedup_v1")  # two units: the group spans both
    assert [r["decision"] for r in rows] == ["keep", "keep", "drop", "drop"]
    assert [r["reason"] for r in rows] == [None, None, "exact_dedup.duplicate", "exact_dedup.duplicate"]
    assert [r["survivor_id"] for r in rows] == ["d0", None, "d0", "d0"]
    clusters = [r["cluster_id"] for r in rows]
    assert clusters[0] == clusters[2] == clusters[3] and clusters[1] is None
    assert [r["scores"]["group_size"] for r in rows] == [3.0, 1.0, 3.0, 3.0]


def test_survivor_follows_order_not_row_position():
    """The fit alone, on a view whose order differs from row order."""
    stage = ExactDedupV1()
    sel = score_fit_select(stage, ["x y", "x y"], order=[10, 5])
    assert sel.keep == [False, True] and sel.survivor_id == ["d1", "d1"]


def test_case_sensitive_when_configured():
    run = run_stage(ExactDedupV1({"lowercase": False}), corpus(["Text", "text"]))
    assert [r["decision"] for r in run.decisions("exact_dedup_v1")] == ["keep", "keep"]


def test_select_without_fit_is_an_error():
    stage = ExactDedupV1()
    scores = stage.score(corpus(["a"])).append_column("id", pa.array(["d0"]))
    with pytest.raises(ValueError, match="needs the result of fit"):
        stage.select(scores, None)


def test_select_reads_a_fit_table_of_every_hash_as_older_jobs_wrote_it():
    """Jobs fitted before the fit kept groups of two or more only have a row of size 1 for
    every other hash: a group of one records no cluster or survivor either way."""
    stage = ExactDedupV1()
    scores = stage.score(corpus(["a b", "c d", "A B"])).append_column("id", pa.array(["d0", "d1", "d2"]))
    h = scores["text_hash"].to_pylist()
    old = pa.table({"text_hash": [h[0], h[1]], "survivor_id": ["d0", "d1"], "group_size": [2, 1]})
    sel = stage.select(scores, Fitted(old))
    assert sel.keep == [True, True, False] and sel.reason == [None, None, "exact_dedup.duplicate"]
    assert sel.cluster_id == [h[0], None, h[0]] and sel.survivor_id == ["d0", None, "d0"]
    assert sel.extra_scores == {"group_size": [2.0, 1.0, 2.0]}
