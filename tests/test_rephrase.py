"""rephrase_v1 (WRAP) end to end with real components: the bundled SmolLM2 GGUF in process
and behind a real OpenAI-compatible server (`python -m llama_cpp.server`), `curate run`
and `curate why` both ways, mixing modes, the generation cache, the token budget, and
retries against a local HTTP server that answers 429 before 200."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, send_json, start_cli, write_shard

from curate.loader import CuratedDataset
from filters.lm.chat import ChatError
from filters.lm.llama_cpp_chat import LlamaCppChat
from filters.lm.models import SMOLLM2
from filters.lm.openai_chat import OpenAIChat
from filters.rephrase import RephraseParams
from filters.rephrase_plan import styles_per_chunk
from filters.wrap_chunks import pack_chunks
from workers.job import JobError
from workers.local import run_stages
from workers.spec import JobSpec

pytest.importorskip("llama_cpp")

DOCS = {
    "park": "The city council met on Tuesday to discuss the new park. Residents asked for more trees and a "
            "playground. The mayor promised a decision by June.",
    "leaf": "Photosynthesis converts light energy into chemical energy. Plants use carbon dioxide and water to make "
            "glucose. Oxygen is released as a by-product.",
    "lab": "Dr. Smith arrived at 3 p.m. with the samples. The lab measured 2.5 grams of salt in each. Results will "
           "be published next month.",
    "rail": "The railway opened in 1850 and carried coal from the valley to the port. Passenger trains followed "
            "ten years later. The line closed in 1965, and its route is now a cycle path.",
}
# Small and greedy, so every run of these tests generates the same text.
FAST = {"max_new_tokens": 64, "chunk_tokens": 40, "temperature": 0.0}


def docs_table(names=None) -> pa.Table:
    names = names or list(DOCS)
    return pa.table({"id": names, "text": [DOCS[n] for n in names]})


def lineage(run, stage="rephrase_v1"):
    return run.decisions(stage)


# -- pure parts -------------------------------------------------------------------------

def test_styles_per_chunk_gives_exact_integer_ratios_and_rotates_styles():
    for ratio, styles in ((1, ["medium", "qa"]), (2, ["easy", "medium", "qa"])):
        plans = [styles_per_chunk(f"doc{i}", 7, ratio, styles) for i in range(200)]
        assert all(len(per_chunk) == ratio for plan in plans for per_chunk in plan)
        assert all(len(set(per_chunk)) == len(per_chunk) for plan in plans for per_chunk in plan)
    counts = {"medium": 0, "qa": 0}
    for i in range(400):
        for per_chunk in styles_per_chunk(f"doc{i}", 3, 1, ["medium", "qa"]):
            counts[per_chunk[0]] += 1
    assert abs(counts["medium"] - counts["qa"]) < 120, counts  # both styles used across the corpus
    half = sum(len(c) for i in range(300) for c in styles_per_chunk(f"d{i}", 10, 0.5, ["medium"]))
    assert half == 1500  # 0.5 per chunk: exact to one chunk per document, here exactly
    assert styles_per_chunk("x", 4, 1, ["qa"]) == styles_per_chunk("x", 4, 1, ["qa"])  # deterministic


def test_params_refuse_what_cannot_work():
    for bad, words in (({"styles": ["poem"]}, "unknown"), ({"prompts": {"qa": "x"}}, "built-in"),
                       ({"ratio": 3}, "more rephrasings"), ({"styles": ["qa", "qa"]}, "twice"),
                       ({"tokenizer": "smollm2-135m"}, "openai backend"), ({"synthetic_for": "low"}, "not a reason"),
                       ({"max_new_tokens": 0}, "greater than"), ({"base_url": "localhost:8000"}, "http://")):
        with pytest.raises(ValueError, match=words):
            RephraseParams.model_validate(bad)
    p = RephraseParams.model_validate({"styles": ["poem", "qa"], "prompts": {"poem": "Rewrite as a poem:"}})
    assert p.prompt("poem") == "Rewrite as a poem:" and p.prompt("qa").startswith("Convert the following paragraph")
    assert {"concurrency", "max_total_tokens", "timeout_s"} <= RephraseParams.execution_fields


def test_synthetic_for_needs_an_earlier_stage_that_drops_with_that_reason(tmp_path):
    base = {"name": "r", "inputs": [str(tmp_path / "*.parquet")], "output": str(tmp_path / "out")}
    ok = [{"stage": "quality_rules_v1"},
          {"stage": "rephrase_v1", "params": {"synthetic_for": "quality_rules.too_few_words"}}]
    JobSpec.model_validate({**base, "stages": ok})
    with pytest.raises(ValueError, match="no stage before rephrase_v1 drops with 'perplexity.too_high'"):
        JobSpec.model_validate({**base, "stages": [{"stage": "quality_rules_v1"}, {
            "stage": "rephrase_v1", "params": {"synthetic_for": "perplexity.too_high"}}]})
    with pytest.raises(ValueError, match="transform rephrase_v1 runs between"):
        JobSpec.model_validate({**base, "stages": [ok[0], {"stage": "rephrase_v1"}, ok[1]]})
    with pytest.raises(ValueError, match="c4_lines_v1 is a transform; only a filter's drops can be rescued"):
        JobSpec.model_validate({**base, "stages": [{"stage": "c4_lines_v1"}, {
            "stage": "rephrase_v1", "params": {"synthetic_for": "c4_lines.no_lines_left"}}]})
    with pytest.raises(ValueError, match="exceed n_ctx"):
        RephraseParams.model_validate({"chunk_tokens": 1000, "max_new_tokens": 1000})


def test_long_sentences_are_not_sent_and_equal_requests_are_generated_once(tmp_path):
    table = " | ".join(f"cell {k} value {k * 7}" for k in range(60))  # one "sentence" of ~400 tokens
    docs = pa.table({"id": ["table", "a", "b"], "text": [table, DOCS["park"], DOCS["park"]]})
    run = run_stages([("rephrase_v1", {**FAST, "styles": ["medium"]})], docs, workdir=tmp_path / "job")
    rows = {r["doc_id"]: r for r in lineage(run)}
    too_long = [r for r in rows.values() if r["parent_id"] == "table"]
    assert [(r["decision"], r["reason"]) for r in too_long] == [("drop", "rephrase.chunk_too_long")]
    assert too_long[0]["scores"]["chunk_tokens"] > 40 and "model" not in json.loads(too_long[0]["detail"])
    stats = run.funnel[-1]["stage_stats"]
    # a and b send the same request: generated once, served twice, and the table never sent
    assert stats["generations"] == 2 and stats["cache_hits"] == 1
    a_kids = [r for r in rows.values() if r["parent_id"] == "a"]
    b_kids = [r for r in rows.values() if r["parent_id"] == "b"]
    assert [r["scores"]["tokens_out"] for r in a_kids] == [r["scores"]["tokens_out"] for r in b_kids]
    assert len(list((tmp_path / "job").rglob("generations/*/*.json"))) == 1
    assert rows["table"]["decision"] == "keep"  # the source is never lost


# -- in process, through `curate run` and `curate why` --------------------------------

@pytest.mark.usefixtures("ray_cluster")
def test_curate_run_creates_synthetic_documents_with_lineage_both_ways(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", list(DOCS.values()), ids=list(DOCS), source=["web"] * len(DOCS))
    spec = {"name": "wrap", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
            "stages": [{"stage": "rephrase_v1", "params": FAST}]}
    (tmp_path / "wrap.json").write_text(json.dumps(spec))
    res = run_cli("run", str(tmp_path / "wrap.json"), "--no-progress")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    row = manifest["funnel"][1]
    stats = row["stage_stats"]
    out = pq.read_table(tmp_path / "out" / manifest["files"][0]["path"]).to_pylist()
    synthetic = [r for r in out if r["parent_id"] is not None]
    # every source stays (real_and_synthetic); one rephrasing per chunk (ratio 1:1), accepted or rejected
    assert [r["id"] for r in out if r["parent_id"] is None] == list(DOCS)
    chunks_total = stats["real_chunks"]
    assert chunks_total > len(DOCS) and stats["generations"] == chunks_total
    assert row["created"] + row["created_rejected"] == chunks_total and row["created"] == len(synthetic) >= 1
    assert f"{stats['generations']:.0f} generations (0 from cache)" in res.stdout
    for r in synthetic:
        detail = json.loads(r["detail"])
        assert detail["source_id"] == r["parent_id"] and r["source"] == "web"
        assert detail["style"] in ("medium", "qa") and detail["backend"] == "llama_cpp"
        assert detail["model"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf:")
        assert detail["finish_reason"] == "stop" and detail["tokens_out"] > 0 and len(detail["prompt_sha256"]) == 64
        assert detail["sampling"] == {"temperature": 0.0, "top_p": 0.9, "seed": 0, "max_tokens": 64}
        assert detail["chunk_index"] < detail["chunks"]
    assert stats["synthetic_tokens"] == sum(json.loads(r["detail"])["tokens_out"] for r in synthetic)
    # the chunks, recounted with the model's own tokenizer, reassemble each source in order
    count = LlamaCppChat(SMOLLM2, vocab_only=True).count_tokens
    per_source = {json.loads(r["detail"])["source_id"]: json.loads(r["detail"])["chunks"] for r in synthetic}
    for name, text in DOCS.items():
        chunks = pack_chunks(text, count, FAST["chunk_tokens"])
        assert " ".join(c.text for c in chunks) == text and all(c.tokens <= 40 for c in chunks)
        assert per_source.get(name, len(chunks)) == len(chunks)
    assert sum(len(pack_chunks(t, count, 40)) for t in DOCS.values()) == chunks_total
    # why, from a synthetic document to its source and back
    child = json.loads(run_cli("why", "wrap", synthetic[0]["id"], "--json").stdout)
    assert child["outcome"] == "kept" and child["created_by"] == "rephrase_v1"
    assert child["parent_id"] == synthetic[0]["parent_id"] and child["sources"][0]["doc_id"] == child["parent_id"]
    assert child["stages"][0]["detail"] == json.loads(synthetic[0]["detail"])
    parent = json.loads(run_cli("why", "wrap", synthetic[0]["parent_id"], "--json").stdout)
    assert synthetic[0]["id"] in [c["doc_id"] for c in parent["children"]]
    text = run_cli("why", "wrap", synthetic[0]["id"]).stdout
    assert f"created by rephrase_v1 from {synthetic[0]['parent_id']}" in text and '"style"' in text
    # the training loader picks real or synthetic rows by the same lineage column
    only = CuratedDataset(tmp_path / "out", synthetic="only")
    assert sorted(i for b in only.iter_batches(8, ["id"]) for i in b.column("id").to_pylist()) == \
        sorted(r["id"] for r in synthetic)
    real = only.with_synthetic("exclude")
    assert sorted(i for b in real.iter_batches(8, ["id"]) for i in b.column("id").to_pylist()) == sorted(DOCS)


def test_synthetic_only_replaces_fully_rephrased_sources_and_keeps_the_rest(tmp_path):
    run = run_stages([("rephrase_v1", {**FAST, "mix": "synthetic_only"})], docs_table(), workdir=tmp_path / "job")
    rows = lineage(run)
    for source in DOCS:
        mine = [r for r in rows if r["parent_id"] == source]
        decision = next(r for r in rows if r["doc_id"] == source)
        accepted = {r["scores"]["chunk_index"] for r in mine if r["decision"] == "keep"}
        fully = len(accepted) == decision["scores"]["chunks"]
        assert decision["decision"] == ("drop" if fully else "keep")
        assert decision["reason"] == ("rephrase.replaced" if fully else None)
    replaced = [r["doc_id"] for r in rows if r["reason"] == "rephrase.replaced"]
    assert replaced, "greedy SmolLM2 accepts every chunk of at least one of these documents"
    assert not set(replaced) & set(run.output["id"].to_pylist())
    # nothing is lost: every source is either in the output or replaced by its rephrasings
    out_parents = set(run.output["parent_id"].to_pylist())
    assert all(s in run.output["id"].to_pylist() or s in out_parents for s in DOCS)


def test_synthetic_for_rephrases_only_what_an_earlier_stage_dropped(tmp_path):
    docs = pa.table({"id": ["long", *DOCS], "text": [" ".join([DOCS["rail"]] * 2), *DOCS.values()]})
    run = run_stages([("quality_rules_v1", {"min_words": 40}),
                      ("rephrase_v1", {**FAST, "synthetic_for": "quality_rules.too_few_words"})], docs,
                     workdir=tmp_path / "job")
    low = {r["doc_id"] for r in run.decisions("quality_rules_v1") if r["reason"] == "quality_rules.too_few_words"}
    assert low == set(DOCS)
    rows = lineage(run)
    inputs = {r["doc_id"]: r for r in rows if r["change"] is None}
    assert set(inputs) == {"long", *DOCS}  # survivors + the rescued
    assert inputs["long"]["decision"] == "keep" and inputs["long"]["scores"]["chunks"] == 0  # not rephrased
    assert all(inputs[d]["reason"] == "rephrase.rescued" for d in DOCS)
    created = [r for r in rows if r["change"] == "created"]
    assert {r["parent_id"] for r in created} == set(DOCS)
    out = run.output.to_pylist()
    assert [r["id"] for r in out if r["parent_id"] is None] == ["long"]
    assert {r["parent_id"] for r in out if r["parent_id"]} <= set(DOCS) and len(out) > 1
    funnel = run.funnel[-1]
    assert funnel["docs_in"] == 1 + len(DOCS) and funnel["reasons"] == {"rephrase.rescued": len(DOCS)}


# -- a real OpenAI-compatible server ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(log_path) -> tuple[subprocess.Popen, str]:
    """`python -m llama_cpp.server` with the bundled SmolLM2 on a free loopback port, once it
    answers /v1/models. Its log goes to a file: llama.cpp's load log fills a pipe and
    blocks the server."""
    import httpx

    from filters.lm.models import resolve_model

    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 - the server writes to it until it stops
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model(SMOLLM2)),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"llama_cpp.server did not come up: {Path(log_path).read_text()[-2000:]}")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("sse_starlette", reason="llama-cpp-python[server] (curate[rephrase]) is not installed")
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama-server") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_backend_through_a_real_server_matches_the_in_process_backend(tmp_path, llama_server, monkeypatch):
    monkeypatch.setenv("TEST_SERVER_KEY", "sk-never-stored-42")
    server = run_stages([("rephrase_v1", {**FAST, "backend": "openai", "base_url": llama_server, "concurrency": 2,
                                          "api_key_env": "TEST_SERVER_KEY"})],
                        docs_table(), workdir=tmp_path / "server")
    stored = [p for p in (tmp_path / "server").rglob("*") if p.is_file() and b"sk-never-stored" in p.read_bytes()]
    assert stored == []  # the key went only into request headers
    local = run_stages([("rephrase_v1", FAST)], docs_table(), workdir=tmp_path / "local")
    s_rows, l_rows = lineage(server), lineage(local)
    assert [r["doc_id"] for r in s_rows] == [r["doc_id"] for r in l_rows]  # same chunks, styles and ids
    s_detail = [json.loads(r["detail"]) for r in s_rows if r["change"] == "created"]
    l_detail = [json.loads(r["detail"]) for r in l_rows if r["change"] == "created"]
    assert all(d["model"].startswith("openai:") and d["backend"] == "openai" for d in s_detail)
    # the server applies the same GGUF chat template: prompts take the same tokens. Outputs may
    # differ by a token or two (the server's own sampling defaults, e.g. repeat_penalty 1.1).
    assert [d["tokens_in"] for d in s_detail] == [d["tokens_in"] for d in l_detail]
    assert all(abs(s["tokens_out"] - c["tokens_out"]) <= 8 for s, c in zip(s_detail, l_detail, strict=True))
    assert server.funnel[-1]["stage_stats"]["generations"] == local.funnel[-1]["stage_stats"]["generations"]
    assert server.funnel[-1]["stage_stats"]["real_chunks"] == local.funnel[-1]["stage_stats"]["real_chunks"]


# -- retries, errors, the key -------------------------------------------------------------

class _Flaky(BaseHTTPRequestHandler):
    """429 (with Retry-After) twice, then 200; records the Authorization headers it saw."""

    answers: list[int] = []
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(self.headers.get("Authorization", ""))
        status = type(self).answers.pop(0) if type(self).answers else 200
        body = {"error": "slow down"} if status != 200 else {
            "choices": [{"message": {"content": "A short paraphrase."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4}}
        send_json(self, status, body, {"Retry-After": "0.05"} if status == 429 else None)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_429_then_200_is_retried_with_the_server_s_delay_and_the_key_stays_secret(flaky_server, monkeypatch):
    monkeypatch.setenv("TEST_REPHRASE_KEY", "sk-secret-123")
    waits = []
    chat = OpenAIChat(flaky_server, model="m", api_key_env="TEST_REPHRASE_KEY", sleep=waits.append, max_retries=3)
    _Flaky.answers, _Flaky.seen = [429, 429], []
    gen = chat.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, top_p=1, seed=0)
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.model_id) == ("A short paraphrase.", 7, 4,
                                                                                   "openai:m")
    assert waits == [0.05, 0.05] and chat.retries == 2 and _Flaky.seen == ["Bearer sk-secret-123"] * 3
    _Flaky.answers = [503] * 4  # more failures than retries: a clear error, without the key
    with pytest.raises(ChatError, match=r"HTTP 503.*gave up after 3 retries") as err:
        chat.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, top_p=1, seed=0)
    assert "sk-secret" not in str(err.value)
    _Flaky.answers = [400]  # not retryable: fails at once
    with pytest.raises(ChatError, match="HTTP 400") as err:
        chat.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, top_p=1, seed=0)
    assert err.value.status == 400 and len(waits) == 5
    refused = OpenAIChat(f"http://127.0.0.1:{_free_port()}", model="m", sleep=waits.append, max_retries=2)
    with pytest.raises(ChatError, match="ConnectError.*gave up after 2 retries"):
        refused.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, top_p=1, seed=0)


# -- cost: the budget and the cache across a kill -9 ------------------------------------

def _spec(tmp_path, name, out, params, shards=1):
    spec = {"name": name, "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(out),
            "stages": [{"stage": "rephrase_v1", "params": params}], "execution": {"num_workers": 1}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _cache_files(out):
    return sorted(p.name for p in out.glob("stages/*rephrase_v1/workspace/generations/*/*.json"))


@pytest.mark.usefixtures("ray_cluster")
def test_token_budget_stops_the_job_cleanly_and_a_rerun_continues_from_the_cache(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", list(DOCS.values()), ids=list(DOCS))
    out = tmp_path / "out"
    res = run_cli("run", str(_spec(tmp_path, "budget", out, {**FAST, "max_total_tokens": 1})), "--no-progress",
                  check=False)
    assert res.returncode != 0 and "token budget (max_total_tokens=1) is spent" in res.stderr
    error = json.loads((out / "error.json").read_text())
    assert error["code"] == "token_budget_spent" and error["stage"] == "rephrase_v1"
    assert not (out / "manifest.json").exists() and not list(out.glob("data/*.parquet"))
    paid = _cache_files(out)
    assert len(paid) == 1  # the check runs before each request: one went out, then it stopped
    run_cli("run", str(_spec(tmp_path, "budget", out, {**FAST, "max_total_tokens": 100_000})), "--no-progress")
    stats = json.loads((out / "manifest.json").read_text())["funnel"][1]["stage_stats"]
    assert stats["cache_hits"] == 1 and stats["generations"] == len(_cache_files(out)) > 1


@pytest.mark.usefixtures("ray_cluster")
def test_kill_9_mid_generation_then_rerun_pays_for_no_chunk_twice(tmp_path):
    for s in range(4):
        names = list(DOCS)[s % 4:] + list(DOCS)[:s % 4]
        write_shard(tmp_path / "in" / f"s{s}.parquet", [f"Report {s}. {DOCS[n]}" for n in names[:2]],
                    ids=[f"s{s}-{n}" for n in names[:2]])
    params = {**FAST, "temperature": 0.7, "seed": 3, "num_actors": 1}
    out, clean = tmp_path / "out", tmp_path / "clean"
    proc = start_cli("run", str(_spec(tmp_path, "killed", out, params)), "--no-progress")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(_cache_files(out)) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    before = _cache_files(out)
    run_cli("run", str(_spec(tmp_path, "killed", out, params)), "--no-progress")
    run_cli("run", str(_spec(tmp_path, "clean", clean, params)), "--no-progress")
    manifest = json.loads((out / "manifest.json").read_text())
    reference = json.loads((clean / "manifest.json").read_text())
    assert [(f["path"], f["sha256"]) for f in manifest["files"]] == [(f["path"], f["sha256"]) for f in
                                                                      reference["files"]]
    stats, clean_stats = manifest["funnel"][1]["stage_stats"], reference["funnel"][1]["stage_stats"]
    total = clean_stats["generations"]
    # the rerun took what the killed run had finished from the cache (a unit the killed run
    # completed keeps its own stats), and generated only the rest
    assert len(before) >= 2 and stats["cache_hits"] >= 1 and stats["generations"] == total
    assert _cache_files(out) == _cache_files(clean)  # one entry per distinct request (equal chunks share one)
    assert stats["tokens_out"] == clean_stats["tokens_out"]
    ledger = sum(json.loads(p.read_text())["tokens"] for p in out.glob("stages/*rephrase_v1/workspace/ledger/*.json"))
    paid = sum(json.loads(p.read_text())["tokens"] for p in clean.glob("stages/*rephrase_v1/workspace/ledger/*.json"))
    assert ledger == paid  # across the kill and the rerun, each generation was paid for once


def test_run_stages_surfaces_a_missing_server_as_a_job_error(tmp_path):
    with pytest.raises(JobError, match="ConnectError"):
        run_stages([("rephrase_v1", {**FAST, "backend": "openai", "base_url": f"http://127.0.0.1:{_free_port()}",
                                     "model": "m", "tokenizer": "smollm2-135m", "max_retries": 0})],
                   docs_table(["park"]), workdir=tmp_path / "job")


@pytest.mark.usefixtures("ray_cluster")
def test_an_input_column_named_detail_is_refused_before_any_generation(tmp_path):
    write_shard(tmp_path / "in" / "a.parquet", [DOCS["park"]], ids=["park"], detail=["mine"])
    res = run_cli("run", str(_spec(tmp_path, "clash", tmp_path / "out", FAST)), "--no-progress", check=False)
    assert res.returncode != 0 and "has a column 'detail', which this job's outputs add" in res.stderr
    assert not list(tmp_path.glob("out/stages/*rephrase_v1*"))
