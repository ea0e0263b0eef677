"""Work units smaller than a shard, on a real local Ray cluster: any unit size gives the
same outputs, a resume keeps the plan the job started with, a changed input is refused,
fits record their artifacts, and each model stage gets its own actor pool."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, write_shard

from filters.base import ModelParams, Selection, Stage
from filters.input_check import InputCheckV1
from workers.job import JobError, run_job
from workers.planner import plan_passes
from workers.shards import InputError
from workers.spec import parse_spec

WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


@pytest.fixture
def one_file(tmp_path):
    rng = random.Random(2)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) + "." for _ in range(300)]
    texts[150] = texts[3]  # an exact duplicate across units
    write_shard(tmp_path / "in" / "big.parquet", texts, ids=[f"d{i}" for i in range(len(texts))])
    return tmp_path


def spec_for(tmp_path, out, stages=None, **execution):
    return parse_spec({"name": "units", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / out),
                       "stages": stages or [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1",
                                                                           "params": {"min_words": 30}}],
                       "execution": execution})


def lineage(out) -> list[tuple]:
    rows = pa.concat_tables(pq.read_table(p) for p in sorted((out / "stages").glob("*/decisions/*.parquet")))
    return sorted(zip(rows["stage"].to_pylist(), rows["doc_id"].to_pylist(), rows["decision"].to_pylist(),
                      rows["reason"].to_pylist(), rows["survivor_id"].to_pylist(), strict=True))


@pytest.mark.usefixtures("ray_cluster")
def test_any_unit_size_gives_the_same_outputs_and_lineage(one_file):
    whole = run_job(spec_for(one_file, "whole", unit_rows=1000), progress=False)
    split = run_job(spec_for(one_file, "split", unit_rows=37), progress=False)
    assert whole["input"]["units"] == 1 and split["input"]["units"] == 9  # 300 rows in 9 units of 33-34
    assert [f["sha256"] for f in split["files"]] == [f["sha256"] for f in whole["files"]]
    assert lineage(one_file / "split") == lineage(one_file / "whole")
    assert whole["funnel"][1]["reasons"] == {"exact_dedup.duplicate": 1}
    assert len(list((one_file / "split" / "_done" / "02-quality_rules_v1.select").glob("*.json"))) == 9


@pytest.mark.usefixtures("ray_cluster")
def test_a_resume_keeps_the_unit_plan_and_refuses_changed_inputs(one_file):
    out = one_file / "out"
    first = run_job(spec_for(one_file, "out", unit_rows=50), progress=False)
    (out / "manifest.json").unlink()
    for marker in list((out / "_done" / "02-quality_rules_v1.select").glob("*.json"))[:3]:
        marker.unlink()
    for marker in (out / "_done" / "write").glob("*.json"):
        marker.unlink()
    again = run_job(spec_for(one_file, "out", unit_rows=7), progress=False)  # execution settings may change
    assert again["input"]["units"] == 6 and [f["sha256"] for f in again["files"]] == [
        f["sha256"] for f in first["files"]]
    (out / "manifest.json").unlink()
    write_shard(one_file / "in" / "new.parquet", [GOOD], ids=["late"])
    with pytest.raises(InputError, match="the inputs changed since this job started"):
        run_job(spec_for(one_file, "out"), progress=False)
    error = json.loads((out / "error.json").read_text())
    assert error["code"] == "bad_input" and "inputs changed" in error["message"]


@pytest.mark.usefixtures("ray_cluster")
def test_a_fit_artifact_is_hashed_into_job_json_and_used_by_the_next_pass(one_file):
    manifest = run_job(spec_for(one_file, "cal", [{"stage": "calibrated_length_test_v1"}], unit_rows=100),
                       progress=False)
    job = json.loads((one_file / "cal" / "job.json").read_text())
    artifact = one_file / "cal" / "stages" / "01-calibrated_length_test_v1" / "artifacts" / "model.json"
    import hashlib

    assert job["artifacts"] == {"01-calibrated_length_test_v1": {
        "model.json": hashlib.sha256(artifact.read_bytes()).hexdigest()}}
    assert manifest["artifacts"] == job["artifacts"]
    mean = json.loads(artifact.read_text())["mean"]
    rows = pa.concat_tables(pq.read_table(p) for p in sorted(
        (one_file / "cal" / "stages" / "01-calibrated_length_test_v1" / "decisions").glob("*.parquet"))).to_pylist()
    assert all(dict(r["scores"])["ratio"] == pytest.approx(dict(r["scores"])["chars"] / mean) for r in rows)
    assert {r["decision"] for r in rows if dict(r["scores"])["ratio"] < 0.5} <= {"drop"}


class _ToyModelParams(ModelParams):
    pass


class _ToyModel(Stage):
    name = "toy_model_v1"
    Params = _ToyModelParams

    def score(self, docs):
        return pa.table({"n": pa.array([0] * docs.num_rows)})

    def select(self, scores, fitted):
        return Selection([True] * scores.num_rows, [None] * scores.num_rows)


def test_each_model_stage_gets_its_own_pass_and_pool():
    a, b = _ToyModel(), _ToyModel()
    passes = plan_passes([InputCheckV1(), a, b])
    assert [(p.model_stage, [s.name for s in p.steps]) for p in passes] == [
        (1, ["00-input_v1.score", "00-input_v1.select", "01-toy_model_v1.score", "01-toy_model_v1.select"]),
        (2, ["02-toy_model_v1.score", "02-toy_model_v1.select"])]


@pytest.mark.usefixtures("ray_cluster")
def test_two_model_stages_run_on_two_pools(tmp_path):
    pytest.importorskip("llama_cpp")
    write_shard(tmp_path / "in" / "a.parquet", [GOOD + f" Note {i}." for i in range(12)],
                ids=[f"p{i}" for i in range(12)])
    ppl = {"backend": "llama_cpp", "window": 16, "num_actors": 1}
    spec = spec_for(tmp_path, "two", [{"stage": "perplexity_v1", "params": ppl},
                                      {"stage": "perplexity_v1", "params": {**ppl, "window": 24}}], unit_rows=4)
    manifest = run_job(spec, progress=False)
    assert manifest["output"]["rows"] == 12
    first = pq.read_table(tmp_path / "two" / "stages" / "01-perplexity_v1" / "scores" /
                          "00000-a.000000000.parquet")
    second = pq.read_table(tmp_path / "two" / "stages" / "02-perplexity_v1" / "scores" /
                           "00000-a.000000000.parquet")
    assert first["tokens"].to_pylist() == [16] * 4 and second["tokens"].to_pylist() == [24] * 4


@pytest.mark.usefixtures("ray_cluster")
def test_a_unit_error_is_recorded_as_data(tmp_path, monkeypatch):
    """A shard that passed pre-flight and then cannot be read in its unit's task (a file
    replaced under a running job): error.json names the code, shard and unit."""
    from workers.shards import Shard

    path = write_shard(tmp_path / "in" / "a.parquet", ["one two three", "three two one"], ids=["a", "b"])
    spec = spec_for(tmp_path, "err", [{"stage": "c4_lines_v1"}])
    monkeypatch.setattr("workers.job.preflight", lambda s: [Shard(0, str(path), 2, True)])
    path.write_bytes(b"PAR1 truncated after pre-flight")
    with pytest.raises(JobError) as exc:
        run_job(spec, progress=False)
    error = json.loads((tmp_path / "err" / "error.json").read_text())
    assert error["code"] == exc.value.code == "bad_input" and error["shard"].endswith("a.parquet")
    assert "not a readable Parquet file" in error["message"] and error["unit"] == "00000-a.000000000"


def test_a_score_of_a_stage_that_does_not_run_before_is_a_spec_error(tmp_path):
    from workers.spec import SpecError

    with pytest.raises(SpecError, match=r"stages.0: params.survivor: 'best_score:perplexity_v1.perplexity' reads a "
                                        r"score of 'perplexity_v1', which does not run before minhash_dedup_v1"):
        spec_for(tmp_path, "x", [{"stage": "minhash_dedup_v1",
                                  "params": {"survivor": "best_score:perplexity_v1.perplexity"}},
                                 {"stage": "perplexity_v1"}])
