"""`curate ablate`: arms from stored decisions, exactly N tokens per arm, deterministic
training, an eval set that never reaches a training batch, results recorded and plotted."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_shard

import filters.lm.small_lm as small_lm
from filters.contamination import words
from filters.lm.bpe import end_of_text_id, load_tokenizer
from filters.lm.small_lm import IGNORE, SmallLMConfig, eval_bits, token_stream, train_small_lm
from workers.ablate import AblationError, AblationParams, _tokenize, budget, draw, run_ablation, summarise
from workers.ablate_arms import Arm, ArmError, build_arms
from workers.demo_corpus import build_demo_corpus
from workers.job import run_job
from workers.spec import parse_spec

TINY = {"n_layer": 1, "d_model": 32, "n_head": 2, "context": 32, "batch_size": 8}
LEAKED = ("leak-0", "leak-1")


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_cluster):
    """A finished job over real text (docstrings and licences of this Python install), with
    two documents of the eval set planted in its input."""
    root = tmp_path_factory.mktemp("ablate")
    corpus, _ = build_demo_corpus(root / "corpus.jsonl", max_docs=400, seed=5)
    docs = [json.loads(line) for line in corpus.open()]
    long = [d for d in docs if d["text"] and not d["id"].startswith("planted:") and len(words(d["text"])) >= 80]
    held_out = long[:25]
    eval_path = root / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in held_out))
    pool = [d for d in docs if d not in held_out] + [dict(held_out[k], id=LEAKED[k]) for k in range(2)]
    write_shard(root / "in" / "pool.parquet", [d["text"] for d in pool], ids=[d["id"] for d in pool])
    spec = parse_spec({"name": "ablate-test", "inputs": [str(root / "in" / "pool.parquet")],
                       "output": str(root / "out"),
                       "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"},
                                  {"stage": "c4_lines_v1", "params": {"min_sentences": 1}}]})
    run_job(spec, progress=False)
    return SimpleNamespace(output=root / "out", eval=eval_path, eval_texts=[d["text"] for d in held_out],
                           pool=pool, root=root)


def decisions(output: Path, folder: str) -> list[dict]:
    return pq.read_table(output / "stages" / folder / "decisions").to_pylist()


def test_arms_come_from_stored_decisions(job):
    arms = {a.name: a for a in build_arms(job.output)}
    assert list(arms) == ["curated", "random", "only:01-exact_dedup_v1", "only:02-quality_rules_v1",
                          "only:03-c4_lines_v1"]
    output_ids = pq.read_table(job.output / "data", columns=["id"])["id"].to_pylist()
    assert sorted(arms["curated"].ids) == sorted(output_ids)
    empty = {r["doc_id"] for r in decisions(job.output, "00-input_v1") if r["decision"] == "drop"}
    assert empty and sorted(arms["random"].ids) == sorted(d["id"] for d in job.pool if d["id"] not in empty)
    rules = decisions(job.output, "02-quality_rules_v1")
    dropped = {r["doc_id"] for r in rules if r["decision"] == "drop"}
    assert dropped and not dropped & set(arms["only:02-quality_rules_v1"].ids)
    assert len(arms["only:02-quality_rules_v1"].ids) == len(job.pool) - len(empty) - len(dropped)
    # the transform's arm carries the text it wrote, not the input's
    c4 = decisions(job.output, "03-c4_lines_v1")
    c4_dropped = {r["doc_id"] for r in c4 if r["decision"] == "drop"}
    pool_text = {d["id"]: d["text"] for d in job.pool}
    c4_arm = arms["only:03-c4_lines_v1"]
    assert not c4_dropped & set(c4_arm.ids)
    assert any(t != (pool_text[i] or "") for i, t in zip(c4_arm.ids, c4_arm.texts, strict=True))


def test_every_arm_gets_exactly_n_tokens(job):
    tok = load_tokenizer()
    eot = end_of_text_id(tok)
    arms = build_arms(job.output)
    _tokenize(arms, tok)
    for n in (1, 777, 4000):
        for arm in arms:
            streams = [draw(arm, seed, n, eot)[0] for seed in range(3)]
            assert all(len(s) == n and s[0] == eot for s in streams), arm.name
    random_arm = next(a for a in arms if a.name == "random")
    a, b = draw(random_arm, 0, 4000, eot)[0], draw(random_arm, 1, 4000, eot)[0]
    assert not np.array_equal(a, b)  # each seed draws its own random selection
    assert np.array_equal(a, draw(random_arm, 0, 4000, eot)[0])
    with pytest.raises(ValueError, match="fewer than"):
        token_stream([[5, 6]], 4, eot)


def test_too_many_tokens_names_the_arm_that_is_short(job):
    with pytest.raises(AblationError, match=r"curated holds \d+, .*tokens: max picks it"):
        run_ablation(job.output, AblationParams(eval=str(job.eval), tokens=10**9, model="ngram"), use_ray=False)


def test_same_seed_gives_the_same_loss():
    config = SmallLMConfig(vocab_size=64, **TINY)
    stream = np.random.default_rng(1).integers(0, 64, 3000)
    runs = [train_small_lm(stream, config, seed) for seed in (7, 7, 8)]
    assert np.allclose(runs[0].losses, runs[1].losses, rtol=0, atol=1e-6)
    held_out = [list(np.random.default_rng(2).integers(0, 64, 300))]
    assert abs(eval_bits(runs[0], held_out, 0) - eval_bits(runs[1], held_out, 0)) < 1e-6
    assert not np.allclose(runs[0].losses, runs[2].losses, atol=1e-6)


def test_training_sees_every_token_of_the_stream_once():
    config = SmallLMConfig(vocab_size=50, **TINY)
    stream = np.random.default_rng(3).integers(0, 50, 1001)
    seen = []
    trained = train_small_lm(stream, config, 0, on_batch=lambda x, y: seen.append((x.copy(), y.copy())))
    rows = []
    for xb, yb in seen:
        for x, y in zip(xb, yb, strict=True):
            m = int((y != IGNORE).sum())
            assert np.array_equal(x[1:m], y[:m - 1])  # each target is the next input
            rows.append(np.concatenate([x[:m], y[m - 1:m]]))
    assert sum(len(r) - 1 for r in rows) == len(stream) - 1 and trained.tokens == len(stream)
    rows.sort(key=lambda r: _find(stream, r))
    # consecutive windows, overlapping by one token, rebuild the stream exactly
    assert np.array_equal(np.concatenate([r[:-1] for r in rows] + [rows[-1][-1:]]), stream)


def _find(stream: np.ndarray, row: np.ndarray) -> int:
    for i in range(len(stream) - len(row) + 1):
        if np.array_equal(stream[i:i + len(row)], row):
            return i
    raise AssertionError("a training row that is not in the stream")


def _windows(rows, n: int) -> set[tuple]:
    return {tuple(r[i:i + n]) for r in rows for i in range(len(r) - n + 1)}


@pytest.mark.parametrize("decontaminate", [True, False])
def test_the_eval_set_never_reaches_a_training_batch(job, monkeypatch, decontaminate):
    batches: list[np.ndarray] = []
    real = small_lm.train_small_lm

    def recording(stream, config, seed, device="cpu", on_batch=None):
        return real(stream, config, seed, device, on_batch=lambda x, y: batches.extend(x))

    monkeypatch.setattr(small_lm, "train_small_lm", recording)
    # the random arm at its full size: every pool document, the planted eval copies included
    params = AblationParams(eval=str(job.eval), tokens="max", seeds=1, arms=["random"],
                            decontaminate=decontaminate, **{**TINY, "context": 128})
    result = run_ablation(job.output, params, use_ray=False)
    arm = result["arms"][0]
    assert arm["runs"][0]["docs_used"] == arm["docs"]
    eval_windows = _windows([e.ids for e in load_tokenizer().encode_batch(job.eval_texts)], 48)
    leaked = _windows(batches, 48) & eval_windows  # ~20 words: more than a 13-gram
    contamination = arm["contamination"]
    assert contamination["contaminated"] >= len(LEAKED) and contamination["eval_docs_hit"] >= len(LEAKED)
    if decontaminate:
        assert contamination["removed"] == contamination["contaminated"] and not contamination["flagged"]
        assert not leaked
    else:  # the check can fail: kept, the planted copies are trained on and the arm is flagged
        assert contamination["removed"] == 0 and contamination["flagged"]
        assert leaked


def test_summarise_gives_a_t_interval():
    s = summarise([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["n"] == 3 and math.isclose(s["sd"], 1.0)
    assert math.isclose(s["ci95"][1] - 2.0, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert summarise([1.5])["ci95"] is None


def test_cli_ngram_ablation_is_recorded_plotted_and_resumable(job):
    args = ("ablate", str(job.output), "--eval", str(job.eval), "--model", "ngram", "--tokens", "3000",
            "--seeds", "2")
    res = run_cli(*args)
    assert "curated" in res.stdout and "only:02-quality_rules_v1" in res.stdout and "bits/byte" in res.stdout
    results = [Path(line.split(":", 1)[1].strip()) for line in res.stderr.splitlines() if line.startswith("result:")]
    assert len(results) == 1 and results[0].parent.parent == job.output / "ablations"
    result = json.loads(results[0].read_text())
    assert result["tokens"] == 3000 and len(result["arms"]) == 5
    for arm in result["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        assert 0 < arm["bits_per_byte"]["mean"] < 16 and arm["bits_per_byte"]["ci95"] is not None
    random_runs = next(a for a in result["arms"] if a["name"] == "random")["runs"]
    assert random_runs[0]["bits_per_byte"] != random_runs[1]["bits_per_byte"]
    assert (results[0].parent / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(run_cli("ablations", "--json").stdout)
    assert {r["arm"] for r in rows if r["ablation_id"] == result["ablation_id"]} == {a["name"]
                                                                                    for a in result["arms"]}
    # the same command again: every run is already stored, nothing is retrained
    stamps = {p: p.stat().st_mtime_ns for p in (results[0].parent / "runs").iterdir()}
    again = run_cli(*args)
    assert not re.findall(r" seed \d+:", again.stdout)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a stored run made from other tokens (e.g. a changed input) is trained again, not reused
    stale = results[0].parent / "runs" / "random.1.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "stream_sha256": "0" * 64}))
    third = run_cli(*args)
    assert re.findall(r"(\S+) +seed (\d+):", third.stdout) == [("random", "1")]
    assert json.loads(stale.read_text())["stream_sha256"] != "0" * 64


def test_cli_transformer_ablation_on_ray(job):
    res = run_cli("ablate", str(job.output), "--eval", str(job.eval), "--tokens", "1500", "--seeds", "2",
                  "--arms", "curated,random", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--context",
                  "32", "--json")
    result = json.loads(res.stdout[res.stdout.index("\n{") + 1:])
    assert result["params"]["model"] == "transformer" and [a["name"] for a in result["arms"]] == ["curated",
                                                                                                  "random"]
    for arm in result["arms"]:
        for run in arm["runs"]:
            assert run["tokens_per_second"] > 0 and math.isfinite(run["bits_per_byte"])
            assert run["final_train_loss"] is not None


def test_cli_errors(job, tmp_path):
    res = run_cli("ablate", str(job.output), "--eval", str(tmp_path / "nope.jsonl"), check=False)
    assert res.returncode == 1 and "nope.jsonl does not exist" in res.stderr
    for bad, field in ((("--seeds", "0"), "seeds"), (("--tokens", "0"), "tokens"),
                       (("--d-model", "30", "--n-head", "4"), "multiple of n_head")):
        res = run_cli("ablate", str(job.output), "--eval", str(job.eval), *bad, check=False)
        assert res.returncode == 2 and field in res.stderr, res.stderr
    res = run_cli("ablate", str(job.output), "--eval", str(job.eval), "--arms", "curated,bogus", check=False)
    assert res.returncode == 1 and "no arm bogus" in res.stderr
    csv = tmp_path / "eval.csv"
    csv.write_text("text\nhello\n")
    res = run_cli("ablate", str(job.output), "--eval", str(csv), check=False)
    assert res.returncode == 1 and "unknown format" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    res = run_cli("ablate", str(job.output), "--eval", str(bad), check=False)
    assert res.returncode == 1 and "bad.jsonl:2" in res.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "job.json").write_text((job.output / "job.json").read_text())
    with pytest.raises(ArmError, match="has not finished"):
        build_arms(unfinished)



def test_an_arm_emptied_by_decontamination_is_an_error_not_a_silent_zero():
    arms = [Arm("curated", "curated", ["a"], [""], tokens=[np.zeros(0, np.int32)]),
            Arm("random", "random", ["a", "b"], ["", "x"], tokens=[np.zeros(0, np.int32), np.ones(3, np.int32)])]
    report = {"curated": {"removed": 4}, "random": {"removed": 4}}
    with pytest.raises(AblationError, match=r"^arm curated holds no text to train on \(documents removed as "
                                            r"contaminated by the eval set: \{'curated': 4\}\)$"):
        budget(arms, {"curated": 1, "random": 6}, report, "max")
    arms[0].tokens = [np.ones(2, np.int32)]
    assert budget(arms, {"curated": 3, "random": 6}, report, "max") == 3
    assert budget(arms, {"curated": 3, "random": 6}, report, 3) == 3


def test_created_documents_and_inputs_without_ids(tmp_path, ray_cluster):
    texts = ["First part here.\n\nSecond part here.", "KEEP this source.\n\nand its child", "one paragraph only"]
    write_shard(tmp_path / "in" / "noids.parquet", texts)  # no id column: ids are derived
    split = {"stage": "split_paragraphs_test_v1"}
    spec = parse_spec({"name": "ablate-split", "inputs": [str(tmp_path / "in" / "noids.parquet")],
                       "output": str(tmp_path / "out"), "stages": [split]})
    run_job(spec, progress=False)
    arms = {a.name: a for a in build_arms(tmp_path / "out")}
    output = pq.read_table(tmp_path / "out" / "data")["text"].to_pylist()
    assert sorted(arms["curated"].texts) == sorted(output) and len(output) == 6  # 4 created, 2 kept sources
    assert sorted(arms["only:01-split_paragraphs_test_v1"].texts) == sorted(output)  # its only stage
    assert sorted(arms["random"].texts) == sorted(texts)
    # a later transform's arm: the pool with its own decisions only, never an earlier stage's creations
    spec = parse_spec({"name": "ablate-split-c4", "inputs": [str(tmp_path / "in" / "noids.parquet")],
                       "output": str(tmp_path / "out2"),
                       "stages": [split, {"stage": "c4_lines_v1", "params": {"min_sentences": 0}}]})
    run_job(spec, progress=False)
    arms = {a.name: a for a in build_arms(tmp_path / "out2")}
    c4 = arms["only:02-c4_lines_v1"]
    assert set(c4.ids) <= set(arms["random"].ids) and texts[0] in c4.texts  # split dropped it; c4 never saw it
    assert "and its child" not in c4.texts


def test_train_on_documents_learns_text():
    from filters.lm.small_lm import train_on_documents

    english = [f"The {w} of the river is long, and the town beside it is old and quiet." for w in
               ("course", "bank", "mouth", "source", "water", "bridge", "valley", "delta")] * 40
    held_out = ["The bank of the river is quiet, and the old town beside it is long."]
    config = SmallLMConfig(**{**TINY, "vocab_size": 4096, "lr": 1e-2})
    _, learned = train_on_documents(english, held_out, 4000, config, seed=0)
    noise = [" ".join(f"q{k * 7919 % 1000}z" for k in range(i, i + 40)) for i in range(400)]
    _, unlearned = train_on_documents(noise, held_out, 4000, config, seed=0)
    assert learned < 0.6 * unlearned, (learned, unlearned)


def test_overlap_counts_every_eval_document_sharing_an_ngram():
    from filters.contamination import EvalNgrams

    shared = "one two three four five six seven eight nine ten eleven twelve thirteen"
    ngrams = EvalNgrams([f"alpha {shared}", f"beta {shared}", "unrelated words only here"])
    overlap, flags = ngrams.check([f"Gamma: {shared.upper()}!", "nothing in common"])
    assert flags == [True, False] and overlap.eval_docs_hit == 2 and overlap.shared_ngrams == 1
