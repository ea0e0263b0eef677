"""The stage contract v2 in process (no Ray): the public runner, fits over an out-of-core
view, train → score → select with an artifact, transforms that edit and create, ids,
work units, the definition checks, and what the spec hash leaves out."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from conftest import GOOD
from stages.calibrated_stage import CalibratedLengthTestV1
from stages.split_stage import SplitParagraphsTestV1

from filters.base import DROP, EDIT, FIT, KEEP, SCORE, NewDoc, Phase, Selection, Stage, Transformed, TransformStage
from filters.exact_dedup import ExactDedupV1
from filters.minhash import MinHashDedupV1
from filters.registry import StageDefinitionError, check_stage_class
from workers.job import JobError
from workers.lineage import created_id
from workers.local import run_stage, run_stages
from workers.planner import plan_passes
from workers.spec import parse_spec


def table(texts, ids=None):
    ids = ids or [f"d{i}" for i in range(len(texts))]
    return pa.table({"id": ids, "text": texts, "lang": ["en"] * len(texts)})


def test_run_stage_applies_score_fit_select_like_a_job():
    run = run_stage(ExactDedupV1(), table([GOOD, GOOD.upper(), "x y z", None]))
    d = run.by_id("exact_dedup_v1")
    assert (d["d1"]["decision"], d["d1"]["reason"], d["d1"]["survivor_id"]) == ("drop", "exact_dedup.duplicate", "d0")
    assert "d3" not in d and run.by_id("input_v1")["d3"]["reason"] == "input.null_text"
    assert run.output["id"].to_pylist() == ["d0", "d2"] and run.output.column_names == ["id", "text", "lang"]
    assert [(f["stage"], f["docs_in"], f["kept"]) for f in run.funnel] == [("input_v1", 4, 3),
                                                                            ("exact_dedup_v1", 3, 2)]
    assert run.fits["exact_dedup_v1"].to_pylist()[0]["group_size"] == 2  # the fit keeps groups of two or more only
    assert run.fits["exact_dedup_v1"].num_rows == 1


def test_train_then_score_then_select_hands_the_fit_and_its_artifact_on():
    texts = ["a" * 10, "b" * 100, "c" * 190, "d" * 40]  # mean length 85
    run = run_stage(CalibratedLengthTestV1({"min_ratio": 0.5}), table(texts))
    d = run.by_id("calibrated_length_test_v1")
    assert d["d0"]["scores"]["chars"] == 10 and d["d0"]["scores"]["ratio"] == pytest.approx(10 / 85)
    assert {k: v["decision"] for k, v in d.items()} == {"d0": "drop", "d1": "keep", "d2": "keep", "d3": "drop"}
    assert d["d3"]["reason"] == "calibrated.too_short"
    assert run.fits["calibrated_length_test_v1"].to_pylist() == [{"mean": 85.0, "n": 4}]
    passes = plan_passes([CalibratedLengthTestV1()])
    assert [[s.method for s in p.steps] for p in passes] == [["measure"], ["score", "select"]]
    assert passes[0].fit_after.method == "train"


def test_results_do_not_depend_on_the_unit_size():
    rng = random.Random(5)
    words = GOOD.split()
    texts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(40)]
    texts += [texts[3], texts[17].upper(), texts[8] + " extra words here"]  # exact and near duplicates
    stages = [ExactDedupV1(), MinHashDedupV1(), SplitParagraphsTestV1()]
    one = run_stages(stages, table(texts))
    for unit_rows in (1, 7):
        other = run_stages(stages, table(texts), unit_rows=unit_rows)
        assert other.output.equals(one.output)
        for stage in ("exact_dedup_v1", "minhash_dedup_v1"):
            assert {k: (v["decision"], v["survivor_id"]) for k, v in other.by_id(stage).items()} == {
                k: (v["decision"], v["survivor_id"]) for k, v in one.by_id(stage).items()}
    assert one.by_id("exact_dedup_v1")["d40"]["survivor_id"] == "d3"
    near = one.by_id("minhash_dedup_v1")["d8"]  # survivor rule min_id: "d42" sorts before "d8"
    assert (near["decision"], near["survivor_id"]) == ("drop", "d42")


def test_a_transform_edits_drops_and_creates_with_lineage_and_order():
    texts = ["one paragraph only", "first part\n\nsecond part\n\nthird part", "KEEP me\n\nand my child", None]
    run = run_stage(SplitParagraphsTestV1(), table(texts))
    d = run.decisions("split_paragraphs_test_v1")
    ids = [r["doc_id"] for r in d]
    kids = [created_id("d1", "split_paragraphs_test_v1", f"p{k}") for k in range(3)]
    keep_kids = [created_id("d2", "split_paragraphs_test_v1", f"p{k}") for k in range(2)]
    assert ids == ["d0", "d1", *kids, "d2", *keep_kids]  # each source, then what it created
    by = {r["doc_id"]: r for r in d}
    assert (by["d1"]["decision"], by["d1"]["reason"]) == ("drop", "split.replaced")
    assert by["d1"]["scores"]["paragraphs"] == 3 and "chars_after" not in by["d1"]["scores"]
    assert all(by[k]["change"] == "created" and by[k]["parent_id"] == "d1" and by[k]["row"] == 1 for k in kids)
    assert by["d2"]["decision"] == "keep" and by["d2"]["change"] is None
    out = run.output.to_pylist()
    assert [r["id"] for r in out] == ["d0", *kids, "d2", *keep_kids]
    assert [r["text"] for r in out][1:4] == ["first part", "second part", "third part"]
    assert [r["parent_id"] for r in out] == [None, "d1", "d1", "d1", None, "d2", "d2"]
    assert {r["lang"] for r in out} == {"en"}  # a created document carries its source's other columns
    f = run.funnel[1]
    assert (f["docs_in"], f["kept"], f["dropped"], f["created"], f["docs_out"]) == (3, 2, 1, 5, 7)
    again = run_stage(SplitParagraphsTestV1(), table(texts))
    assert again.output.equals(run.output)  # deterministic ids and order


def test_later_stages_see_the_new_version():
    texts = [GOOD + "\n\n" + GOOD.upper(), "short"]
    run = run_stages([SplitParagraphsTestV1(), ExactDedupV1()], table(texts))
    kids = [created_id("d0", "split_paragraphs_test_v1", f"p{k}") for k in range(2)]
    d = run.by_id("exact_dedup_v1")
    assert set(d) == {"d1", *kids}  # the replaced source never reaches dedup; its children do
    assert d[kids[1]]["reason"] == "exact_dedup.duplicate" and d[kids[1]]["survivor_id"] == kids[0]
    assert d[kids[0]]["parent_id"] == "d0"  # parent_id travels with the document
    assert run.output["id"].to_pylist() == [kids[0], "d1"]


def test_transform_results_are_checked():
    with pytest.raises(ValueError, match="drop without a reason"):
        Transformed(action=[DROP], text=[None], reason=[None])
    with pytest.raises(ValueError, match="edit but text"):
        Transformed(action=[EDIT], text=[None], reason=[None])
    with pytest.raises(ValueError, match="not an input index"):
        Transformed(action=[KEEP], text=[None], reason=[None], created=(NewDoc(1, "a", "x"),))
    with pytest.raises(ValueError, match="share the variant"):
        Transformed(action=[KEEP], text=[None], reason=[None], created=(NewDoc(0, "a", "x"), NewDoc(0, "a", "y")))

    class Broken(TransformStage):
        name = "broken_test_v1"

        def transform(self, docs, fitted):
            return Transformed(action=[KEEP], text=[None], reason=[None])  # one action, whatever the input

    with pytest.raises(JobError, match="broken_test_v1.transform returned 1 actions for 2 documents") as exc:
        run_stage(Broken(), table(["a", "b"]))
    assert exc.value.code == "stage_failed" and exc.value.where["stage"] == "broken_test_v1"


def test_stage_definitions_are_checked_when_registered():
    class NoSelect(Stage):
        name = "no_select_v1"

    class BadPhase(Stage):
        name = "bad_phase_v1"
        phases = (SCORE, Phase.fit("missing_method"))

        def select(self, scores, fitted) -> Selection:
            return Selection([], [])

    class OnlyFit(Stage):
        name = "only_fit_v1"
        phases = (FIT,)

        def select(self, scores, fitted) -> Selection:
            return Selection([], [])

    for cls, message in ((NoSelect, "implements select"), (BadPhase, "names method 'missing_method'"),
                         (OnlyFit, "needs a scoring phase")):
        with pytest.raises(StageDefinitionError, match=message):
            check_stage_class(cls)


def test_execution_settings_are_not_part_of_the_spec_hash():
    base = {"name": "h", "inputs": ["x.parquet"], "output": "o",
            "stages": [{"stage": "perplexity_v1", "params": {"window": 64}}]}
    a = parse_spec(base)
    b = parse_spec({**base, "execution": {"num_workers": 3, "unit_rows": 10},
                    "stages": [{"stage": "perplexity_v1",
                                "params": {"window": 64, "num_actors": 4, "cpus_per_actor": 2, "n_threads": 2}}]})
    c = parse_spec({**base, "stages": [{"stage": "perplexity_v1", "params": {"window": 128}}]})
    assert a.spec_hash() == b.spec_hash() and a.job_id() == b.job_id()
    assert a.spec_hash() != c.spec_hash()
