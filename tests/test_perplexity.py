"""perplexity_v1 in real jobs: Ray actors load the bundled SmolLM2 once each, lineage
records every score and reason, and a new mode or threshold never rescores."""

from __future__ import annotations

import hashlib
import json
import random

import pyarrow.parquet as pq
import pytest
from conftest import GOOD, write_shard

from workers.job import run_job
from workers.reselect import ReselectError, preview_selection
from workers.spec import parse_spec

pytest.importorskip("llama_cpp")

PROSE = [
    GOOD,
    "Rain fell over the valley through the night, and by morning the streams were full. Farmers walked out to "
    "their fields to see how much water had reached the young crops.",
    "The committee met on Tuesday to discuss the new budget. Most members agreed that the library should receive "
    "more money next year, because the number of visitors has grown steadily.",
    "She opened the window and listened to the birds in the garden. It was the first warm day of spring, and the "
    "whole street seemed to wake up at once.",
]


def _junk(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("qxzjkvw0123456789#$") for _ in range(rng.randint(3, 9))) for _ in range(40))


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(3)
    docs = [p + f" Note {i}." for i in range(6) for p in PROSE] + [_junk(rng) for _ in range(12)]
    rng.shuffle(docs)
    ids = [f"d{i:02d}" for i in range(len(docs))]
    write_shard(tmp_path / "in" / "a.parquet", docs[:18], ids[:18])
    write_shard(tmp_path / "in" / "b.parquet", docs[18:], ids[18:])
    junk = {i for i, d in zip(ids, docs, strict=True) if d.split()[0] not in {p.split()[0] for p in PROSE}}
    return tmp_path, ids, junk


def _spec(tmp_path, params):
    return parse_spec({"name": "ppl", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
                       "stages": [{"stage": "perplexity_v1", "params": params}]})


def _decisions(out):
    return [
        row for path in sorted((out / "stages").glob("01-perplexity_v1/decisions/*.parquet"))
        for row in pq.read_table(path).to_pylist()]


def test_band_job_on_ray_actors_records_scores_and_reasons(ray_cluster, corpus):
    tmp_path, ids, junk = corpus
    # Bits per byte, not per-token perplexity: character junk splits into many short,
    # individually guessable tokens (perplexity ~70-95, below some prose), but costs ~5.5
    # bits per byte against ~1.3 for prose.
    params = {"backend": "llama_cpp", "window": 64, "num_actors": 2, "score": "bits_per_byte",
              "select": {"mode": "band", "band": "low", "keep_ratio": 0.5}}
    manifest = run_job(_spec(tmp_path, params), progress=False)
    rows = _decisions(tmp_path / "out")
    assert sorted(r["doc_id"] for r in rows) == ids  # one lineage row per document
    kept = {r["doc_id"] for r in rows if r["decision"] == "keep"}
    assert len(kept) == 18 and manifest["output"]["rows"] == 18  # r = 0.5 of 36
    assert not kept & junk  # low perplexity band: the junk is never kept
    assert {r["reason"] for r in rows if r["decision"] == "drop"} == {"perplexity.outside_band"}
    scores = rows[0]["scores"]
    assert {"perplexity", "bits_per_byte", "tokens", "doc_tokens", "windows", "truncated"} <= dict(scores).keys()
    junk_row = next(r for r in rows if r["doc_id"] in junk)
    assert dict(junk_row["scores"])["truncated"] == 1.0 and dict(junk_row["scores"])["tokens"] == 64
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert any(p.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") for p in job["model_hashes"])


def test_new_mode_or_threshold_is_a_reselect_never_a_rescore(ray_cluster, corpus):
    tmp_path, ids, junk = corpus
    params = {"backend": "llama_cpp", "window": 64, "select": {"mode": "buckets"}}
    run_job(_spec(tmp_path, params), progress=False)
    out = tmp_path / "out"
    score_files = sorted(out.glob("stages/01-perplexity_v1/scores/*.parquet"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in score_files}
    rows = _decisions(out)
    # p60 of 36 scores (numpy's linear rule) is the 22nd smallest, so 15 scores are >= p60: tail.
    assert sum(r["reason"] == "perplexity.bucket_tail" for r in rows) == 15
    assert {dict(r["scores"])["bucket"] for r in rows} == {0.0, 1.0, 2.0}

    band = preview_selection(out, "perplexity_v1", {"select": {"mode": "band", "band": "high", "keep_ratio": 0.25}})
    assert band["after"]["kept"] == 9 and band["after"]["reasons"] == {"perplexity.outside_band": 27}
    ceiling = max(dict(r["scores"])["bits_per_byte"] for r in rows if r["doc_id"] not in junk)
    hard = preview_selection(out, 1, {"score": "bits_per_byte", "select": {"mode": "max_perplexity", "max": ceiling}})
    assert hard["after"]["kept"] == 36 - len(junk) and hard["after"]["reasons"] == {"perplexity.too_high": len(junk)}
    with pytest.raises(ReselectError, match="window"):
        preview_selection(out, 1, {"window": 128})
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in score_files} == before


def test_gpu_request_on_a_cpu_cluster_fails_before_waiting(ray_cluster, corpus):
    from workers.job import JobError

    tmp_path, _, _ = corpus
    with pytest.raises(JobError, match=r"num_gpus=1\.0 per actor but the Ray cluster has 0 GPUs"):
        run_job(_spec(tmp_path, {"num_gpus": 1}), progress=False)


def test_corrupt_model_file_fails_the_job_naming_the_stage(ray_cluster, corpus):
    from workers.job import JobError

    tmp_path, _, _ = corpus
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(JobError, match="perplexity_v1: cannot load its model"):
        run_job(_spec(tmp_path, {"backend": "llama_cpp", "model": str(bad)}), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_model_or_package_is_a_spec_error(tmp_path):
    from filters.lm.base import MissingDependency, require
    from workers.spec import SpecError, local_paths

    with pytest.raises(SpecError, match="stages.0.params.model: file not found: /no/such.arpa"):
        local_paths(_spec(tmp_path, {"backend": "kenlm", "model": "/no/such.arpa"}))
    with pytest.raises(MissingDependency, match=r"pip install 'curate\[llama\]' \(or pip install no-such-package\)"):
        require("no_such_module", "no-such-package", "test", "llama")
