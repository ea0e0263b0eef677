"""preselect_v1: the family, the fastText classifier and the selection, as units and as a
real job on Ray actors (bundled family, fastText trained for real)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_shard
from pydantic import ValidationError

from filters.base import Fitted
from filters.lm.family import BUNDLED_FAMILY, bpc_matrix, member_scorer, read_family
from filters.preselect import MODEL_FILE, REPORT_FILE, SCORE_COLUMN, PreselectV1
from filters.preselect_method import CalibrationError
from workers.demo_corpus import _stdlib_docstrings
from workers.fit_view import TableScoreView
from workers.job import run_job
from workers.reselect import preview_selection
from workers.spec import parse_spec

pytest.importorskip("torch")
pytest.importorskip("fasttext")


@pytest.fixture(scope="module")
def docstrings() -> list[str]:
    """Real, varied English (fastText needs a few thousand distinct words to train)."""
    texts = [d["text"] for d in itertools.islice(_stdlib_docstrings(), 4000) if len(d["text"]) > 300]
    return texts[:700]


def _junk(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("qxzjkvw0123456789#$") for _ in range(rng.randint(3, 9))) for _ in range(60))


SPAM = ["click", "here", "buy", "now", "free", "offer", "best", "price", "cheap", "deal", "win", "prize", "casino",
        "online", "pills", "discount", "limited", "subscribe", "exclusive", "bonus", "cash", "fast", "guaranteed"]


def _spam(rng: random.Random) -> str:
    return " ".join(rng.choice(SPAM) for _ in range(rng.randint(40, 120)))


def _calibration_view(texts: list[str], strength: list[float]) -> TableScoreView:
    n = len(texts)
    return TableScoreView(pa.table({"id": [f"c{i}" for i in range(n)], "order": list(range(n)),
                                    "strength": pa.array(strength, pa.float64()), "calibration_text": texts}))


# -- the family --------------------------------------------------------------------------------

def test_bundled_family_loads_and_scores_bits_per_character():
    members, meta = read_family(BUNDLED_FAMILY)
    assert len(members) >= 4 and len({m.benchmark_score for m in members}) == len(members)
    for m, entry in zip(members, meta["models"], strict=True):
        assert m.benchmark_score == pytest.approx(-entry["target_bpc"])  # the benchmark is measured, not declared
        for name, sha in entry["files"].items():
            with open(f"{m.model}/{name}", "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == sha
    scorers = [member_scorer(m, 255, 1) for m in members[:2]]
    prose = "The committee met on Tuesday to discuss the budget for the new library building in town."
    bpc = bpc_matrix(scorers, [prose, "", prose * 40], max_chars=len(prose))
    assert np.isfinite(bpc[0]).all() and np.isnan(bpc[1]).all()
    assert bpc[2] == pytest.approx(bpc[0])  # only the first max_chars characters count, the same for every model
    assert 0.5 < bpc[0, 0] < 8


def test_small_lm_scorer_agrees_with_the_trainers_own_loss(tmp_path, docstrings):
    from filters.lm.bpe import end_of_text_id, load_tokenizer
    from filters.lm.small_lm import SmallLMConfig, TrainedLM, eval_bits, token_stream, train_small_lm
    from filters.lm.small_lm_backend import SmallLMScorer, load_small_lm, save_small_lm

    tok = load_tokenizer()
    eot = end_of_text_id(tok)
    config = SmallLMConfig(vocab_size=tok.get_vocab_size(), n_layer=1, d_model=32, n_head=2, context=64)
    trained = train_small_lm(token_stream((tok.encode(t).ids for t in docstrings), 6000, eot), config, seed=0)
    save_small_lm(trained, tmp_path / "lm")
    model, _, meta = load_small_lm(tmp_path / "lm")
    assert meta["config"]["d_model"] == 32
    texts = [t[:120] for t in docstrings[-5:]]
    scorer = SmallLMScorer(str(tmp_path / "lm"), window=63, mode="strided", stride=32, max_windows=None)
    results = scorer.score(texts)
    loaded = TrainedLM(model, config, 0, 0, 0, 0.0, "cpu")
    for text, r in zip(texts, results, strict=True):
        assert r.tokens == r.doc_tokens  # short texts: one window, every token scored
        assert r.nll_nats / math.log(2) == pytest.approx(eval_bits(loaded, [tok.encode(text).ids], eot), rel=1e-4)


@pytest.mark.parametrize("params, fragment", [
    ({"models": [{"name": "a", "backend": "small_lm", "model": "x", "benchmark_score": 1}]}, "at least 2"),
    ({"models": [{"name": "a", "backend": "small_lm", "model": "x", "benchmark_score": 1},
                 {"name": "b", "backend": "small_lm", "model": "y", "benchmark_score": 1}]}, "every benchmark score"),
    ({"family": "/some/folder", "models": [{"name": "a", "backend": "kenlm", "model": "x", "benchmark_score": 1},
                                           {"name": "b", "backend": "kenlm", "model": "y", "benchmark_score": 2}]},
     "not both"),
    ({"scorer": "/m.bin", "calibration_only": True}, "existing classifier"),
    ({"select": {"mode": "budget", "fraction": 0}}, "greater than 0"),
])
def test_bad_params_are_named(params, fragment):
    with pytest.raises(ValidationError, match=fragment):
        PreselectV1.Params.model_validate(params)


# -- train, score, select -------------------------------------------------------------------------

def test_fit_trains_fasttext_and_the_saved_bin_scores_the_same_through_scorer(tmp_path, docstrings):
    rng = random.Random(0)
    texts = docstrings[:300] + [_spam(rng) for _ in range(300)]
    strength = [1.0] * 300 + [rng.choice([0.2, 0.4, 0.6]) for _ in range(300)]
    stage = PreselectV1({"min_per_class": 50})
    table = stage.train(_calibration_view(texts, strength), tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["positives"] == report["negatives"] == 300 and report["strength_exactly_1"] == 300
    assert sorted(table["label"].to_pylist()) == [0.0] * 300 + [1.0] * 300

    held_out = pa.table({"id": ["p", "j", "e"], "text": [docstrings[650], _spam(rng), "  "]})
    fitted = Fitted(table, tmp_path)
    ours = stage.score(held_out, fitted)
    p, j, e = ours[SCORE_COLUMN].to_pylist()
    assert p > 0.5 > j and e is None  # prose vs spam; whitespace has nothing to score
    reused = PreselectV1({"scorer": str(tmp_path / MODEL_FILE)}).score(held_out, Fitted(None, None))
    assert reused[SCORE_COLUMN].to_pylist() == ours[SCORE_COLUMN].to_pylist()


def test_too_small_a_calibration_sample_is_a_clear_error(tmp_path, docstrings):
    view = _calibration_view(docstrings[:12], [1.0] * 5 + [0.5] * 7)
    with pytest.raises(CalibrationError, match=r"calibration sample of 12 documents gives 5 positives .* at least 20"):
        PreselectV1().train(view, tmp_path)
    assert not (tmp_path / MODEL_FILE).exists()


def _cut(stage: PreselectV1, scores: list, chars: list):
    n = len(scores)
    table = pa.table({"id": [f"d{i}" for i in range(n)], "order": list(range(n)),
                      SCORE_COLUMN: pa.array(scores, pa.float64()), "chars": chars})
    fitted = Fitted(stage.fit(TableScoreView(table), None), None)
    return stage.select(table, fitted)


def test_budget_keeps_the_best_documents_up_to_the_character_share():
    rng = random.Random(1)
    scores = [round(rng.random(), 2) for _ in range(500)]  # rounded: many ties
    chars = [rng.randint(50, 5000) for _ in range(500)]
    for fraction in (0.1, 0.25, 0.7):
        sel = _cut(PreselectV1({"select": {"mode": "budget", "fraction": fraction}}), scores, chars)
        kept = sum(c for c, k in zip(chars, sel.keep, strict=True) if k)
        assert fraction * sum(chars) <= kept < fraction * sum(chars) + max(chars)
        best_dropped = max(s for s, k in zip(scores, sel.keep, strict=True) if not k)
        assert min(s for s, k in zip(scores, sel.keep, strict=True) if k) >= best_dropped
        assert {r for r in sel.reason if r} == {"preselect.below_budget"}


def test_threshold_top_fraction_and_empty_documents():
    scores, chars = [0.9, 0.2, None, 0.6, 0.6], [10, 10, 0, 10, 10]
    sel = _cut(PreselectV1({"select": {"mode": "threshold", "min_score": 0.5}}), scores, chars)
    assert sel.keep == [True, False, False, True, True]
    assert sel.reason == [None, "preselect.below_threshold", "preselect.empty", None, None]
    sel = _cut(PreselectV1({"select": {"mode": "top_fraction", "fraction": 0.5}}), scores, chars)
    assert sel.keep == [True, False, False, True, False]  # 2 of 4 scored; the tie goes to the earlier document
    assert sel.reason[4] == "preselect.below_top_fraction"


# -- a real job --------------------------------------------------------------------------------------

def test_full_loop_on_ray_records_strength_scores_and_the_classifier(ray_cluster, tmp_path, docstrings):
    rng = random.Random(2)
    docs = docstrings[:240] + [_junk(rng) for _ in range(60)]
    rng.shuffle(docs)
    ids = [f"d{i:03d}" for i in range(len(docs))]
    write_shard(tmp_path / "in" / "a.parquet", docs[:150], ids[:150])
    write_shard(tmp_path / "in" / "b.parquet", docs[150:], ids[150:])
    params = {"sample": 200, "max_chars": 400, "min_per_class": 10, "num_actors": 2,
              "select": {"mode": "budget", "fraction": 0.3}}
    spec = parse_spec({"name": "ps", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
                       "stages": [{"stage": "preselect_v1", "params": params}]})
    run_job(spec, progress=False)
    out = tmp_path / "out"
    rows = [r for p in sorted(out.glob("stages/01-preselect_v1/decisions/*.parquet")) for r in pq.read_table(p)
            .to_pylist()]
    assert sorted(r["doc_id"] for r in rows) == ids
    scores = [dict(r["scores"]) for r in rows]
    assert all(SCORE_COLUMN in s for s in scores)  # every document scored by fastText
    calibrated = [s for s in scores if s.get("calibration") == 1.0]
    assert len(calibrated) == 200 and all("strength" in s and "bpc.en-1350k" in s for s in calibrated)
    assert sum(1 for s in scores if "strength" in s) == 200
    report = json.loads((out / "stages/01-preselect_v1/artifacts" / REPORT_FILE).read_text())
    labelled = [s for s in scores if "calibration_label" in s]
    assert len(labelled) == report["positives"] + report["negatives"] and report["positives"] >= 10
    assert {r["reason"] for r in rows if r["decision"] == "drop"} == {"preselect.below_budget"}

    job = json.loads((out / "job.json").read_text())
    recorded = job["artifacts"]["01-preselect_v1"]
    model = out / "stages/01-preselect_v1/artifacts" / MODEL_FILE
    assert recorded[MODEL_FILE] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert any("en-1350k" in p for p in job["model_hashes"])

    stamp = {p: p.stat().st_mtime_ns for p in out.glob("stages/01-preselect_v1/scores*/*.parquet")}
    wider = preview_selection(out, "preselect_v1", {"select": {"mode": "budget", "fraction": 0.6}})
    assert wider["after"]["kept"] > wider["before"]["kept"] and wider["newly_dropped"] == 0
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rescored or retrained


def test_calibration_data_trains_on_a_separate_file(tmp_path, docstrings):
    rows = [{"body": t} for t in docstrings[:300]] + [{"body": ""}]
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = PreselectV1({"calibration_data": str(tmp_path / "cal.jsonl"), "calibration_text_field": "body",
                         "max_chars": 200, "min_per_class": 5, "n_threads": 1})
    assert stage.draw(pa.table({"id": ["x"], "text": ["some text here"]}))["sample_key"].to_pylist() == [None]
    stage.train(None, tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["calibration_documents"] == 300  # the empty row is left out
    assert report["source"].endswith("cal.jsonl")
    assert report["positives"] + report["negatives"] <= 300 and (tmp_path / MODEL_FILE).exists()


def test_preselect_family_build_writes_a_hashed_family_a_job_can_name(tmp_path, docstrings):
    from service.cli import main

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "part": i % 2}) + "\n"
                                              for i, t in enumerate(docstrings[:400])))
    (tmp_path / "target.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docstrings[400:420]))
    source = {"path": str(tmp_path / "a.jsonl")}
    recipe = {"name": "tiny", "target": {"path": str(tmp_path / "target.jsonl")}, "max_chars": 300, "window": 63,
              "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "context": 64},
              "members": [{"name": "big", "tokens": 8000, "sources": [source]},
                          {"name": "small", "tokens": 1000, "sources": [{**source, "where": {"part": 1}}]}]}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))  # YAML is a superset of JSON
    assert main(["preselect-family", "build", str(tmp_path / "recipe.json"), "--out", str(tmp_path / "fam")]) == 0
    members, meta = read_family(str(tmp_path / "fam"))
    assert [m.name for m in members] == ["big", "small"] and len(meta["version"]) == 16
    assert members[0].benchmark_score > members[1].benchmark_score  # 8x the data: lower loss on the target
    assert meta["target"]["docs"] == 20 and meta["models"][1]["training"]["sources"][0]["where"] == {"part": 1}
    stage = PreselectV1({"family": str(tmp_path / "fam"), "n_threads": 1})
    assert stage.members() == members
    assert stage.window() == 63  # the family's own window (its models' context is 64), not 255
    assert np.isfinite(stage.family_bpc(docstrings[:2])).all()
