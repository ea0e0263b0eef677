"""`curate plan`: a job measured on a sample and extrapolated, checked against the job
itself run on the same input."""

from __future__ import annotations

import json
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from filters import registry
from filters.base import Phase, Selection, Stage
from filters.exact_dedup import ExactDedupV1
from filters.minhash import MinHashDedupV1
from filters.quality_rules import QualityRulesV1
from workers.bucketed_fit import BYTES_PER_KEY_ROW, bucket_count
from workers.cost_plan import PlanError, _buckets, _line, format_plan, plan
from workers.local import run_stages
from workers.spec import parse_spec

RNG = random.Random(5)
VOCAB = [f"word{i}" for i in range(4000)]
STOP = ["the", "and", "of", "to", "that", "with", "have", "be"]


def page(words: int) -> str:
    return " ".join(RNG.choice(STOP) if RNG.random() < 0.3 else RNG.choice(VOCAB) for _ in range(words)) + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 shards, 3,000 documents: a third too short for the rules, 1 % exact copies."""
    root = tmp_path_factory.mktemp("plan")
    texts = [page(RNG.choice([20, 120, 300])) for _ in range(2970)]
    texts += RNG.sample(texts, 30)
    RNG.shuffle(texts)
    for k in range(3):
        part = texts[k * 1000:(k + 1) * 1000]
        pq.write_table(pa.table({"id": [f"s{k}-{i}" for i in range(len(part))], "text": part}),
                       root / f"s{k}.parquet", row_group_size=250)
    return root, texts


STAGES = [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1", "params": {"min_words": 50}},
          {"stage": "minhash_dedup_v1"}]


def spec_for(root, stages=STAGES):
    return parse_spec({"name": "planned", "inputs": [str(root / "*.parquet")], "output": str(root / "out"),
                       "stages": stages})


def test_a_cost_line_through_two_measurements():
    assert _line(1.0, 100, 2.0, 200) == pytest.approx((0.0, 0.01))
    assert _line(3.0, 100, 4.0, 200) == pytest.approx((2.0, 0.01))  # a fixed part (a model load)
    assert _line(2.0, 100, 1.5, 200) == pytest.approx((0.0, 0.0075))  # noise: proportional


def sampled(estimate: int, truth: int, total: int = 3000, n: int = 400) -> bool:
    """Within 3 standard errors of a share estimated from n of total documents."""
    share = truth / total
    return abs(estimate - truth) <= 3 * (share * (1 - share) / n) ** 0.5 * total + 1


def test_the_plan_matches_the_job_it_plans(corpus):
    root, texts = corpus
    p = plan(spec_for(root), sample=400, cpus=4)
    assert p["input"]["rows"] == 3000 and p["input"]["sample"] == 400
    assert [s["stage"] for s in p["stages"]] == ["input_v1", "exact_dedup_v1", "quality_rules_v1",
                                                 "minhash_dedup_v1"]
    real = run_stages([(s["stage"], s.get("params", {})) for s in STAGES],
                      pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    funnel = {f["stage"]: f for f in real.funnel}
    for s in p["stages"]:
        truth = funnel[s["stage"]]
        assert sampled(s["docs_in"], truth["docs_in"]) and sampled(s["docs_out"], truth["kept"])
        assert s["tokens_in"] == pytest.approx(truth["text_bytes_in"] / 4, rel=0.1)
        assert s["cpu_hours"] >= 0
        dedup = s["stage"] in ("exact_dedup_v1", "minhash_dedup_v1")
        assert (s["note"] or "").startswith("removes duplicates: a sample of 400") == dedup
    assert p["stages"][-1]["disk_bytes"] > p["stages"][1]["disk_bytes"]  # MinHash stores n-gram sets
    assert p["total"]["output_rows"] == pytest.approx(real.output.num_rows, rel=0.1)
    assert p["cluster"]["units"] >= 4 and p["total"]["wall_hours"] <= p["total"]["cpu_hours"]


def test_a_fit_too_large_for_memory_is_flagged_and_a_failing_stage_is_named(corpus, tmp_path):
    root, texts = corpus
    copies = tmp_path / "copies"  # every page 10 times: the exact-dedup fit holds a row per page
    copies.mkdir()
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(1000)], "text": texts[:100] * 10}), copies / "c.parquet")
    p = plan(spec_for(copies), sample=200, cpus=2, memory_bytes=2_000)
    flagged = {s["stage"]: s["note"] for s in p["stages"] if s["note"] and "held in memory" in s["note"]}
    assert "exact_dedup_v1" in flagged and "split the input into several jobs" in flagged["exact_dedup_v1"]
    assert "quality_rules_v1" not in flagged
    short = tmp_path / "short.txt"
    short.write_text("too short to match\n")
    bad = [{"stage": "decontam_v1", "params": {"eval_sets": [{"name": "s", "path": str(short)}]}}]
    with pytest.raises(PlanError, match=r"sample of 50 documents: .*failed on it .*decontam_v1: eval set 's' .*has no "
                                         r"item of 13 words"):
        plan(spec_for(root, bad), sample=50)


def test_a_bucketed_fit_is_planned_from_the_task_memory_budget(tmp_path):
    def spec(**execution):
        return parse_spec({"name": "p", "inputs": [str(tmp_path / "*.parquet")], "output": str(tmp_path / "out"),
                           "stages": [{"stage": "minhash_dedup_v1"}], "execution": execution})

    mh = MinHashDedupV1()
    chosen = bucket_count(10_000_000, [mh], 1024)
    assert chosen > 1
    notes = _buckets(spec(fit_task_memory_mb=1024), mh, 10_000_000, 2**35, chosen)[1]
    assert notes == [f"fit in {chosen} buckets of ~{200_000_000 / chosen:,.0f} keys (~"
                     f"{200_000_000 * BYTES_PER_KEY_ROW / chosen / 2**20:,.0f} MiB a task; "
                     "execution.fit_task_memory_mb = 1024)"]
    assert _buckets(spec(), mh, 1_000, 2**35, 1) == (1, [])
    _, single = _buckets(spec(fit_buckets=1), mh, 10_000_000, 2**33, 1)  # 12 GiB of keys on an 8 GiB node
    assert "single-node fit groups 200,000,000 keys" in single[0] and "execution.fit_buckets" in single[0]
    _, few = _buckets(spec(fit_buckets=2), mh, 10_000_000, 2**35, 2)
    assert "a bucket would fail; raise execution.fit_buckets" in few[0]
    # Exact dedup has one key a document: in the job's buckets, but far smaller ones.
    assert _buckets(spec(), ExactDedupV1(), 10_000_000, 2**35, chosen)[1] == [
        f"fit in {chosen} buckets of ~{10_000_000 / chosen:,.0f} keys (~"
        f"{10_000_000 * BYTES_PER_KEY_ROW / chosen / 2**20:,.0f} MiB a task; execution.fit_task_memory_mb = 2048)"]
    assert _buckets(spec(), QualityRulesV1(), 10_000_000, 2**35, chosen) == (None, [])
    # The plan shows the count the job will use: one for all of its bucketed fits.
    both = parse_spec({"name": "p", "inputs": [str(tmp_path / "*.parquet")], "output": str(tmp_path / "out"),
                       "stages": [{"stage": "exact_dedup_v1"}, {"stage": "minhash_dedup_v1"}],
                       "execution": {"fit_buckets": 3}})
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(300)],
                             "text": [f"page {i} " + "word " * (i % 50) for i in range(300)]}), tmp_path / "a.parquet")
    p = plan(both, sample=100)
    assert [s["fit_buckets"] for s in p["stages"]] == [None, 3, 3]


def test_curate_plan_prints_the_table_and_writes_nothing(corpus, tmp_path):
    root, _ = corpus
    spec = tmp_path / "web.json"
    spec.write_text(json.dumps({"name": "planned", "inputs": [str(root / "*.parquet")],
                                "output": str(tmp_path / "out"), "stages": STAGES}))
    out = run_cli("plan", str(spec), "--sample", "200", "--cpus", "8").stdout
    assert "input: 3,000 documents" in out and "cluster: 8 CPUs" in out and "minhash_dedup_v1" in out
    assert out.splitlines()[-1].startswith("total: ")
    as_json = json.loads(run_cli("plan", str(spec), "--sample", "200", "--json").stdout)
    assert as_json["stages"][0]["docs_in"] == 3000
    assert not (tmp_path / "out").exists()


class _FirstBigCallIsSlow(Stage):
    """A one-off cost on a path only a larger batch reaches, as a compiled loop's first call
    on a rare branch: it must not read as a per-document cost."""

    name = "first_big_call_is_slow_v1"
    paid = False

    def score(self, docs):
        if docs.num_rows > 150 and not _FirstBigCallIsSlow.paid:
            _FirstBigCallIsSlow.paid = True
            time.sleep(2)
        return pa.table({"n": pa.array([1.0] * docs.num_rows)})

    def select(self, scores, fitted):
        return Selection(keep=[True] * scores.num_rows, reason=[None] * scores.num_rows)


def test_a_one_off_cost_in_the_larger_sample_is_not_read_as_per_document(corpus, monkeypatch):
    root, _ = corpus
    monkeypatch.setitem(registry.STAGES, _FirstBigCallIsSlow.name, _FirstBigCallIsSlow)
    p = plan(spec_for(root, [{"stage": _FirstBigCallIsSlow.name}]), sample=200, cpus=2)
    stage = next(s for s in p["stages"] if s["stage"] == _FirstBigCallIsSlow.name)
    assert _FirstBigCallIsSlow.paid  # the sample did reach the slow path, in the warm-up
    assert stage["cpu_hours"] * 3600 < 1.0  # 3,000 documents: a 2 s sleep over 100 would say 60 s


class _FitNeedsManyDocs(Stage):
    """A fit that refuses fewer than 150 documents, like PreSelect's calibration when few
    documents of a small sample reach it."""

    name = "fit_needs_many_docs_v1"
    phases = (Phase.score(), Phase.fit())

    def score(self, docs):
        return pa.table({"n": pa.array([1.0] * docs.num_rows)})

    def fit(self, view, artifacts):
        if view.num_rows < 150:
            raise ValueError(f"needs 150 documents, got {view.num_rows}")
        return None

    def select(self, scores, fitted):
        return Selection(keep=[True] * scores.num_rows, reason=[None] * scores.num_rows)


def test_a_sample_whose_half_is_too_small_for_a_fit_is_doubled(corpus, monkeypatch):
    root, _ = corpus
    monkeypatch.setitem(registry.STAGES, _FitNeedsManyDocs.name, _FitNeedsManyDocs)
    spec = spec_for(root, [{"stage": _FitNeedsManyDocs.name}])
    p = plan(spec, sample=200, cpus=2)  # 200 runs, its half of 100 does not: 400 is measured
    assert p["input"]["sample"] == 400 and p["stages"][0]["docs_in"] == 3000
    assert p["input"]["resampled"] == ["a sample of 200 was too small (a stage: needs 150 documents, got 100)"]
    assert "! a sample of 200 was too small (a stage: needs 150 documents, got 100); sampled more" in format_plan(p)
    # The whole sample failing is not a size the plan can fix by itself: no retry, named.
    with pytest.raises(PlanError, match=r"sample of 100 documents: .*got 100\); a larger --sample"):
        plan(spec, sample=100, cpus=2)
