"""The REST API in-process (FastAPI TestClient, lifespan included) against the
session's real Ray head and job server, with a real DuckDB catalog file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, write_shard
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import KeyStore
from service.settings import Settings

SPEC = {"name": "api", "inputs": ["small/*.parquet"], "output": "api",
        "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]}
WORDS = GOOD.lower().replace(",", "").replace(".", "").split()


@pytest.fixture(scope="module")
def api(ray_head, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    write_shard(data / "small" / "a.parquet", [GOOD, GOOD.upper(), "Too short.", None], ids=["a0", "a1", "a2", "a3"])
    write_shard(data / "small" / "b.parquet", [GOOD.replace("city", "town"), "#x " * 60], ids=["b0", "b1"])
    rng = random.Random(3)
    for s in range(6):  # a slower corpus for cancel/poll tests
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400))) for _ in range(2500)]
        write_shard(data / "slow" / f"s{s}.parquet", texts, ids=[f"s{s}-{i}" for i in range(len(texts))])
    settings = Settings(home=root / "home", data_roots=[data], output_root=root / "runs",
                        ray_jobs_url=ray_head.jobs_url, ray_address=ray_head.address, poll_seconds=0.3,
                        max_body_bytes=64_000)
    keys = KeyStore(settings.keys_path)
    admin, _ = keys.create("admin")
    read, _ = keys.create("read")
    with TestClient(create_app(settings)) as client:
        client.admin = {"Authorization": f"Bearer {admin}"}
        client.read = {"Authorization": f"Bearer {read}"}
        client.data = data
        client.root = root
        yield client


def assert_error(resp, status: int, code: str, fragment: str = "") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert fragment in body["error"]["message"], body
    return body["error"]


def wait_for(client, job_id, states=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=client.read).json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stuck in {job['state']}")


def submit(client, spec, **headers):
    return client.post("/jobs", json=spec, headers={**client.admin, **headers})


@pytest.fixture(scope="module")
def done_job(api):
    resp = submit(api, SPEC)
    assert resp.status_code == 201, resp.text
    job = wait_for(api, resp.json()["job_id"])
    assert job["state"] == "succeeded", job
    return job


def test_health_and_readiness_need_no_key(api):
    assert api.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert api.get("/readyz").json() == {"status": "ready", "checks": {"duckdb": True, "ray": True}}


def test_job_lifecycle_lineage_and_download(api, done_job):
    job_id = done_job["job_id"]
    stages = done_job["progress"]["stages"]
    assert [(s["stage"], s["docs_in"], s["docs_out"]) for s in stages] == [
        ("input_v1", 6, 5), ("exact_dedup_v1", 5, 4), ("quality_rules_v1", 4, 2)]
    assert all(s["units_done"] == s["units_total"] == 2 for s in stages)

    stats = api.get(f"/jobs/{job_id}/stats", headers=api.read).json()
    assert stats["stages"][1]["reasons"] == {"exact_dedup.duplicate": 1}
    assert len(stats["stages"][2]["units"]) == 2

    doc = api.get(f"/jobs/{job_id}/documents/a1", headers=api.read).json()
    assert doc["outcome"] == "dropped" and doc["reason"] == "exact_dedup.duplicate"
    assert doc["stages"][1]["survivor_id"] == "a0"

    drops = api.get(f"/jobs/{job_id}/drops", params={"stage": "quality_rules_v1"}, headers=api.read).json()["items"]
    assert sorted((d["doc_id"], d["reason"]) for d in drops) == [
        ("a2", "quality_rules.too_few_words"), ("b1", "quality_rules.short_mean_word_length")]
    assert drops[0]["text_preview"] in ("Too short.", "#x " * 60)
    null = api.get(f"/jobs/{job_id}/drops", params={"reason": "input.null_text"}, headers=api.read).json()["items"]
    assert [d["doc_id"] for d in null] == ["a3"] and null[0]["text_preview"] is None

    manifest = api.get(f"/jobs/{job_id}/manifest", headers=api.read).json()
    assert manifest["output"]["rows"] == 2
    name = manifest["files"][0]["path"].split("/")[-1]
    resp = api.get(f"/jobs/{job_id}/outputs/{name}", headers=api.read)
    assert resp.status_code == 200
    sha = hashlib.sha256(resp.content).hexdigest()
    assert sha == resp.headers["x-content-sha256"] == manifest["files"][0]["sha256"]
    assert pq.read_table(io.BytesIO(resp.content))["id"].to_pylist() == ["a0"]

    logs = api.get(f"/jobs/{job_id}/logs", headers=api.read).text
    assert f"job {job_id} complete: 2 rows" in logs
    assert any(j["job_id"] == job_id for j in api.get("/jobs", headers=api.read).json()["items"])


def test_preview_selection_reuses_stored_scores(api, done_job):
    job_id = done_job["job_id"]
    scores = api.root / "runs" / "api" / "stages" / "02-quality_rules_v1" / "scores"
    before = {p.name: p.stat().st_mtime_ns for p in scores.iterdir()}
    resp = api.post(f"/jobs/{job_id}/preview-selection", headers=api.read,
                    json={"stage": "quality_rules_v1",
                          "params": {"min_words": 2, "min_alpha_word_fraction": 0.5, "min_stop_words": 0}})
    body = resp.json()
    assert resp.status_code == 200, body
    # "Too short." (a2) now passes; "#x #x ..." (b1) still fails on its 1-letter words.
    assert body["before"]["kept"] == 2 and body["after"]["kept"] == 3 and body["newly_kept"] == 1
    assert body["after"]["reasons"] == {"quality_rules.short_mean_word_length": 1}
    assert body["changed_params"] == ["min_alpha_word_fraction", "min_stop_words", "min_words"]
    assert {p.name: p.stat().st_mtime_ns for p in scores.iterdir()} == before  # nothing re-scored
    assert_error(api.post(f"/jobs/{job_id}/preview-selection", headers=api.read,
                          json={"stage": "exact_dedup_v1", "params": {"lowercase": False}}),
                 422, "cannot_reselect", "changing lowercase changes how exact_dedup_v1 scores documents")
    assert_error(api.post(f"/jobs/{job_id}/preview-selection", headers=api.read,
                          json={"stage": "exact_dedup_v1", "params": {"against": "indexes/web"}}),
                 422, "cannot_reselect", "changing against changes exact_dedup_v1's corpus-wide fit")
    assert_error(api.post(f"/jobs/{job_id}/preview-selection", headers=api.read,
                          json={"stage": "quality_rules_v1", "params": {"min_words": "x"}}),
                 422, "invalid_request", "params.min_words")


def test_idempotency_key_and_duplicate_submission(api, done_job):
    spec = {**SPEC, "name": "idem", "output": "idem"}
    first = submit(api, spec, **{"Idempotency-Key": "k-1"})
    again = submit(api, spec, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.headers["location"] == f"/jobs/{first.json()['job_id']}" == again.headers["location"]
    assert again.json()["job_id"] == first.json()["job_id"] and again.json()["attempts"] == 1
    assert_error(submit(api, {**spec, "name": "other", "output": "other"}, **{"Idempotency-Key": "k-1"}),
                 409, "idempotency_key_reused")
    assert_error(submit(api, SPEC), 409, "job_exists", f"job {done_job['job_id']} already exists (succeeded)")
    wait_for(api, first.json()["job_id"])


@pytest.mark.parametrize(("spec", "status", "code", "fragment"), [
    ({**SPEC, "stages": [{"stage": "quality_rules_v1", "params": {"min_words": "many"}}]}, 422, "invalid_request",
     "body.stages.0: params.min_words: Input should be a valid integer"),
    ({**SPEC, "stages": [{"stage": "nope_v1"}]}, 422, "invalid_request", "unknown stage 'nope_v1'"),
    ({**SPEC, "inputs": ["../secrets/*.parquet"]}, 400, "path_not_allowed", "'..' is not allowed"),
    ({**SPEC, "inputs": ["/etc/passwd"]}, 400, "path_not_allowed", "outside the allowed input roots"),
    ({**SPEC, "inputs": ["s3://bucket/x.parquet"]}, 400, "path_not_allowed", "remote URLs"),
    ({**SPEC, "output": "/tmp/elsewhere"}, 400, "path_not_allowed", "outside the output root"),
    ({**SPEC, "output": "a/../../escape"}, 400, "path_not_allowed", "'..' is not allowed"),
])
def test_bad_specs_and_paths_are_rejected_before_launch(api, spec, status, code, fragment):
    assert_error(submit(api, spec), status, code, fragment)


def test_symlink_out_of_the_data_root_is_rejected(api, tmp_path):
    outside = write_shard(tmp_path / "outside.parquet", [GOOD], ids=["x"])
    link = api.data / "link"
    link.mkdir(exist_ok=True)
    if not (link / "x.parquet").exists():
        os.symlink(outside, link / "x.parquet")
    assert_error(submit(api, {**SPEC, "inputs": ["link/*.parquet"], "output": "sym"}), 400, "path_not_allowed",
                 "is outside the allowed input roots")


def test_auth_on_every_jobs_route(api, done_job):
    job_id = done_job["job_id"]
    routes = [("get", "/jobs"), ("post", "/jobs"), ("get", f"/jobs/{job_id}"), ("get", f"/jobs/{job_id}/events"),
              ("post", f"/jobs/{job_id}/cancel"),
              ("post", f"/jobs/{job_id}/retry"), ("get", f"/jobs/{job_id}/logs"), ("get", f"/jobs/{job_id}/stats"),
              ("get", f"/jobs/{job_id}/documents/a0"), ("get", f"/jobs/{job_id}/documents"),
              ("get", f"/jobs/{job_id}/drops"),
              ("post", f"/jobs/{job_id}/preview-selection"), ("get", f"/jobs/{job_id}/manifest"),
              ("get", f"/jobs/{job_id}/outputs/x.parquet"), ("post", f"/jobs/{job_id}/ablations"),
              ("get", f"/jobs/{job_id}/ablations"), ("get", f"/jobs/{job_id}/ablations/abl-000000000000"),
              ("get", f"/jobs/{job_id}/ablations/abl-000000000000/plot.png"), ("get", f"/jobs/{job_id}/artifacts"),
              ("get", f"/jobs/{job_id}/artifacts/01-x/model.bin"), ("get", f"/jobs/{job_id}/contamination")]
    documented = {(m, p) for p, ops in api.get("/openapi.json").json()["paths"].items() for m in ops
                  if p.startswith("/jobs")}
    assert len(documented) == len(routes)  # every documented /jobs route is in this list
    for method, path in routes:
        missing = getattr(api, method)(path)
        assert_error(missing, 401, "unauthorized", "missing API key")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_error(getattr(api, method)(path, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized",
                     "invalid API key")
        if method == "post" and "preview" not in path:
            assert_error(api.post(path, headers=api.read, json=SPEC), 403, "forbidden", "read-only")
        if "artifacts/" in path:  # a trained model: admin keys only
            assert_error(api.get(path, headers=api.read), 403, "forbidden", "read-only")


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(api):
    from service.rate_limit import RateLimiter

    saved = api.app.state.limiter
    api.app.state.limiter = RateLimiter(rate=1, burst=3)  # the service's own limiter, set low for the test
    try:
        answers = [api.get("/jobs", headers=api.read) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert_error(answers[3], 429, "rate_limited", "more than 1 requests per second; retry in 1 s")
        assert answers[3].headers["retry-after"] == "1"
        assert api.get("/jobs", headers=api.admin).status_code == 200  # another key has its own bucket
        assert api.get("/healthz").status_code == 200  # health needs no key and is not limited
        time.sleep(1.05)
        assert api.get("/jobs", headers=api.read).status_code == 200  # a token again after a second
    finally:
        api.app.state.limiter = saved


def test_error_shapes_on_not_found_and_conflicts(api, done_job):
    job_id = done_job["job_id"]
    assert_error(api.get("/jobs/nope", headers=api.read), 404, "job_not_found")
    assert_error(api.get(f"/jobs/{job_id}/documents/zzz", headers=api.read), 404, "document_not_found")
    assert_error(api.get(f"/jobs/{job_id}/outputs/other.parquet", headers=api.read), 404, "file_not_found")
    assert_error(api.post(f"/jobs/{job_id}/cancel", headers=api.admin), 409, "job_not_running", "already succeeded")
    assert_error(api.post(f"/jobs/{job_id}/retry", headers=api.admin), 409, "job_not_retryable")
    assert_error(api.get("/no-such-route"), 404, "not_found")
    assert_error(api.get(f"/jobs/{job_id}/drops", params={"limit": 0}, headers=api.read), 422, "invalid_request",
                 "query.limit")
    big = {**SPEC, "name": "big", "inputs": ["x" * 70_000]}
    assert_error(submit(api, big), 413, "request_too_large", "exceeds 64000 bytes")


def test_cancel_a_running_job_then_retry_resumes(api):
    spec = {**SPEC, "name": "slow", "inputs": ["slow/*.parquet"], "output": "slow",
            "execution": {"num_workers": 1}}
    job_id = submit(api, spec).json()["job_id"]
    wait_for(api, job_id, states=("running",), timeout=60)
    cancelled = api.post(f"/jobs/{job_id}/cancel", headers=api.admin).json()
    assert cancelled["state"] == "cancelled"
    assert not (api.root / "runs" / "slow" / "manifest.json").exists()
    retried = api.post(f"/jobs/{job_id}/retry", headers=api.admin).json()
    assert retried["attempts"] == 2 and retried["state"] in ("queued", "running")
    done = wait_for(api, job_id, timeout=180)
    assert done["state"] == "succeeded"
    assert done["progress"]["stages"][0]["docs_in"] == 6 * 2500


def test_failed_job_reports_the_error_and_retry_succeeds_after_a_fix(api):
    bad = api.data / "fixme" / "x.parquet"
    bad.parent.mkdir()
    raw = pa.array([GOOD.encode(), b"caf\xe9"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["f0", "f1"], "text": raw}), bad)
    job_id = submit(api, {**SPEC, "name": "fixme", "inputs": ["fixme/*.parquet"], "output": "fixme"}).json()["job_id"]
    failed = wait_for(api, job_id)
    assert failed["state"] == "failed" and failed["error_code"] == "bad_input"
    assert "x.parquet row 1: text is not valid UTF-8 (byte 0xe9 at offset 3)" in failed["error"]
    write_shard(bad, [GOOD, "café"], ids=["f0", "f1"])
    api.post(f"/jobs/{job_id}/retry", headers=api.admin)
    done = wait_for(api, job_id)
    assert done["state"] == "succeeded" and done["error"] is None and done["attempts"] == 2


def test_unavailable_and_internal_errors_use_the_same_body(api, done_job, monkeypatch, caplog):
    jobs = api.app.state.jobs

    async def unreachable() -> bool:
        return False

    async def broken(job_id: str) -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(jobs.ray, "reachable", unreachable)
    error = assert_error(api.get("/readyz"), 503, "unavailable", "not ready")
    assert error["details"] == {"duckdb": True, "ray": False}
    monkeypatch.setattr(jobs, "stats", broken)
    quiet = TestClient(api.app, raise_server_exceptions=False)  # same running app, no second lifespan
    with caplog.at_level("ERROR", logger="curate.api"):
        resp = quiet.get(f"/jobs/{done_job['job_id']}/stats", headers={**api.read, "X-Request-ID": "req-42"})
    error = assert_error(resp, 500, "internal_error", "request id req-42")
    assert "disk on fire" not in resp.text and error["details"] == {"request_id": "req-42"}
    assert resp.headers["x-request-id"] == "req-42"
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert logged and "disk on fire" in str(logged[0].exc_info[1])  # the text goes to the log, not the client


def test_a_job_ray_forgot_is_reported_failed_and_can_be_retried(api, done_job):
    """After a restart of a local Ray head, Ray no longer knows running submissions."""
    jobs = api.app.state.jobs
    row = {**jobs.store.get(done_job["job_id"]), "job_id": "lost-0000000000", "state": "running",
           "submission_id": "lost-0000000000-1-abcdef", "idempotency_key": None,
           "output": str(api.root / "runs" / "lost")}
    api.portal.call(jobs.store.save, row)
    jobs.live.pop("lost-0000000000", None)
    job = api.get("/jobs/lost-0000000000", headers=api.read).json()
    assert job["state"] == "failed" and job["error_code"] == "ray_forgot"
    assert "Ray has no record of submission" in job["error"]
    assert "POST /jobs/lost-0000000000/retry" in job["error"]


PPL = {"stage": "perplexity_v1", "params": {"backend": "llama_cpp", "window": 16}}


def ppl_spec(model: str, name: str = "ppl") -> dict:
    return {**SPEC, "name": name, "output": name, "stages": [{**PPL, "params": {**PPL["params"], "model": model}}]}


@pytest.mark.parametrize("model", ["/etc/hosts", "/no/such/dir/model.gguf", "../secret.gguf", "link/outside.gguf",
                                   "a\u0000b.gguf"])
def test_a_model_path_is_confined_like_an_input(api, tmp_path, model):
    """Outside the roots (existing or not), '..', a symlink out, a NUL byte: all 400, and the
    message is the same whether the file exists, so nothing about the server's files leaks."""
    target = tmp_path / "outside.gguf"
    target.write_bytes(b"GGUF")
    (api.data / "link").mkdir(exist_ok=True)
    if not (api.data / "link" / "outside.gguf").exists():
        os.symlink(target, api.data / "link" / "outside.gguf")
    error = assert_error(submit(api, ppl_spec(model)), 400, "path_not_allowed", "stages.0.params.model:")
    if model.startswith("/"):
        assert error["message"] == f"stages.0.params.model: {model!r} is outside the allowed roots"


@pytest.mark.parametrize("inputs", ["%2e%2e/%2e%2e/etc/passwd", "%252e%252e/%252e%252e/etc/passwd",
                                    "..%2f..%2fetc/passwd", "a" * 5000 + "/*.parquet", ("x" * 250 + "/") * 40])
def test_encoded_traversal_and_very_long_paths_are_refused_without_a_500(api, inputs):
    """A spec's paths are not URL-decoded (a '%2e' is a file name, confined like any other),
    and a path too long for the file system is a 4xx that names the field."""
    resp = submit(api, {**SPEC, "inputs": [inputs], "output": f"enc-{len(inputs)}-{inputs[:2]}"})
    if resp.status_code == 201:  # confined to the data root as a literal name: the job finds no such file
        job = wait_for(api, resp.json()["job_id"])
        assert job["state"] == "failed" and job["error_code"] == "bad_input", job
        assert f"{api.data}/" in job["error"] and "matches no file" in job["error"]
    else:
        assert_error(resp, 400, "path_not_allowed", "inputs")


def test_nul_byte_in_an_input_path_is_a_400_not_a_500(api):
    assert_error(submit(api, {**SPEC, "inputs": ["small\u0000x/*.parquet"]}), 400, "path_not_allowed",
                 "control character")


def test_a_missing_model_inside_the_roots_is_named(api):
    assert_error(submit(api, ppl_spec("models/missing.gguf")), 422, "invalid_request",
                 "stages.0.params.model: file not found: models/missing.gguf")


def test_the_api_never_loads_a_model_the_job_does(api):
    """A garbage model inside the roots passes the API (it only checks the path); loading
    happens in the job, which fails with the stage named and the code as data."""
    bad = api.data / "models" / "garbage.gguf"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    resp = submit(api, ppl_spec("models/garbage.gguf", name="garbage"))
    assert resp.status_code == 201, resp.text
    failed = wait_for(api, resp.json()["job_id"])
    assert failed["state"] == "failed" and failed["error_code"] == "model_load_failed"
    assert "perplexity_v1: cannot load its model" in failed["error"]
    spec = json.loads((api.root / "runs" / "garbage" / "job.json").read_text())["spec"]
    assert spec["stages"][0]["params"]["model"] == str(bad)  # made absolute inside the root


def test_created_documents_on_the_rest_routes(api):
    """The document route walks a created document back to its source and lists a
    source's children; a drop preview shows the text the dropping stage saw."""
    from workers.lineage import created_id

    split = "split_paragraphs_test_v1"
    write_shard(api.data / "paras" / "p.parquet", [f"{GOOD}\n\nToo short.", GOOD.replace("city", "port")],
                ids=["two", "one"])
    spec = {"name": "paras", "inputs": ["paras/*.parquet"], "output": "paras",
            "stages": [{"stage": split}, {"stage": "quality_rules_v1"}]}
    job = wait_for(api, submit(api, spec).json()["job_id"])
    assert job["state"] == "succeeded", job
    assert [(s["stage"], s["docs_in"], s["created"], s["docs_out"]) for s in job["progress"]["stages"]] == [
        ("input_v1", 2, 0, 2), (split, 2, 2, 3), ("quality_rules_v1", 3, 0, 2)]
    short = created_id("two", split, "p1")
    doc = api.get(f"/jobs/{job['job_id']}/documents/{short}", headers=api.read).json()
    assert doc["outcome"] == "dropped" and doc["reason"] == "quality_rules.too_few_words"
    assert doc["created_by"] == split and doc["parent_id"] == "two"
    assert doc["sources"][0]["doc_id"] == "two" and doc["sources"][0]["stages"][-1]["reason"] == "split.replaced"
    source = api.get(f"/jobs/{job['job_id']}/documents/two", headers=api.read).json()
    assert sorted(c["doc_id"] for c in source["children"]) == sorted([created_id("two", split, "p0"), short])
    drops = api.get(f"/jobs/{job['job_id']}/drops", headers=api.read).json()["items"]
    previews = {d["doc_id"]: d["text_preview"] for d in drops}
    assert previews == {"two": f"{GOOD}\n\nToo short."[:300], short: "Too short."}


def test_rephrase_runs_through_the_rest_api_with_synthetic_lineage(api):
    """rephrase_v1 (bundled SmolLM2, in process on the job's actor) submitted over REST: the
    job's progress counts created documents, the document route walks a synthetic
    document to its source with its detail, and the source lists it."""
    pytest.importorskip("llama_cpp")
    write_shard(api.data / "wrap" / "w.parquet", [GOOD], ids=["src"])
    spec = {"name": "wrap", "inputs": ["wrap/*.parquet"], "output": "wrap",
            "stages": [{"stage": "rephrase_v1", "params": {"max_new_tokens": 48, "chunk_tokens": 64,
                                                            "temperature": 0, "styles": ["medium"]}}]}
    job = wait_for(api, submit(api, spec).json()["job_id"], timeout=240)
    assert job["state"] == "succeeded", job
    row = job["progress"]["stages"][1]
    assert row["stage"] == "rephrase_v1" and row["docs_in"] == 1 and row["docs_out"] == 1 + row["created"]
    rows = api.get(f"/jobs/{job['job_id']}/documents", params={"stage": "rephrase_v1", "change": "created"},
                   headers=api.read).json()["items"]
    assert len(rows) >= 1 and all(r["parent_id"] == "src" for r in rows)  # one attempt per chunk
    assert all(r["detail"]["style"] == "medium" and r["detail"]["source_id"] == "src" for r in rows)
    assert row["created"] == sum(r["decision"] == "keep" for r in rows)
    child = rows[0]["doc_id"]
    doc = api.get(f"/jobs/{job['job_id']}/documents/{child}", headers=api.read).json()
    assert doc["created_by"] == "rephrase_v1" and doc["parent_id"] == "src"
    assert doc["stages"][0]["detail"]["model"].startswith("SmolLM2-135M-Instruct")
    source = api.get(f"/jobs/{job['job_id']}/documents/src", headers=api.read).json()
    assert sorted(c["doc_id"] for c in source["children"]) == sorted(r["doc_id"] for r in rows)


def test_pages_follow_a_stable_order_with_a_next_cursor(api, done_job):
    """Cursor pagination on /jobs, /drops and /documents: pages of `limit`, `next` until the
    last page, every row exactly once, in a stable order; a bad cursor is a 422."""
    job_id = done_job["job_id"]

    def walk(path, limit, **params):
        seen, cursor = [], None
        while True:
            page = api.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})},
                           headers=api.read).json()
            assert len(page["items"]) <= limit
            seen += page["items"]
            cursor = page["next"]
            if cursor is None:
                return seen

    docs = walk(f"/jobs/{job_id}/documents", 2)
    everything = api.get(f"/jobs/{job_id}/documents", params={"limit": 1000}, headers=api.read).json()
    assert everything["next"] is None and docs == everything["items"]
    assert [(d["stage_index"], d["doc_id"]) for d in docs] == sorted((d["stage_index"], d["doc_id"]) for d in docs)
    assert len(docs) == 6 + 5 + 4  # every lineage row: input_v1, exact_dedup_v1, quality_rules_v1
    kept = walk(f"/jobs/{job_id}/documents", 1, stage="quality_rules_v1", decision="keep")
    assert [d["doc_id"] for d in kept] == ["a0", "b0"]
    drops = walk(f"/jobs/{job_id}/drops", 1)
    assert [d["doc_id"] for d in drops] == ["a3", "a1", "a2", "b1"] and all("text_preview" in d for d in drops)
    jobs = walk("/jobs", 1)
    assert [j["job_id"] for j in jobs] == [j["job_id"] for j in api.get("/jobs", headers=api.read).json()["items"]]
    assert_error(api.get(f"/jobs/{job_id}/drops", params={"cursor": "not-a-cursor"}, headers=api.read), 422,
                 "invalid_request", "invalid cursor")
    assert_error(api.get("/jobs", params={"limit": 1001}, headers=api.read), 422, "invalid_request", "query.limit")


def test_every_route_documents_its_response_body(api):
    schema = api.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            ok = op["responses"].get("200") or op["responses"].get("201")
            content = ok.get("content", {})
            assert content, f"{method.upper()} {path} documents no response body"
            media = next(iter(content.values()))
            if "application/json" in content:
                assert media["schema"] not in ({}, {"type": "object"}), f"{method.upper()} {path}: a bare dict"


def test_openapi_lists_every_stage_and_its_params(api):
    from filters.registry import BUILTIN_FIRST_STAGE, STAGES

    schema = api.get("/openapi.json").json()
    variants = schema["components"]["schemas"]["StageSpec"]["oneOf"]
    names = {v["properties"]["stage"]["const"] for v in variants}
    assert names == set(STAGES) - {BUILTIN_FIRST_STAGE}
    quality = next(v for v in variants if v["properties"]["stage"]["const"] == "quality_rules_v1")
    ref = quality["properties"]["params"]["$ref"].split("/")[-1]
    assert "min_words" in schema["components"]["schemas"][ref]["properties"]



def test_an_ablation_runs_as_a_ray_job_and_serves_its_result(api, done_job):
    job_id = done_job["job_id"]
    held_out = ("A lighthouse keeper recorded the weather twice a day for forty years, noting the wind, the "
                "height of the waves and every ship that passed the point in a series of small leather books.")
    (api.data / "eval.jsonl").write_text(json.dumps({"text": held_out}) + "\n")
    body = {"eval": "eval.jsonl", "model": "ngram", "seeds": 2}
    assert_error(api.post(f"/jobs/{job_id}/ablations", json=body, headers=api.read), 403, "forbidden")
    assert_error(api.post(f"/jobs/{job_id}/ablations", json={**body, "eval": "/etc/hosts"}, headers=api.admin),
                 400, "path_not_allowed", "eval:")
    assert_error(api.post("/jobs/nope/ablations", json=body, headers=api.admin), 404, "job_not_found")
    assert_error(api.post(f"/jobs/{job_id}/ablations", json={**body, "eval": "small"}, headers=api.admin), 422,
                 "invalid_request", "eval: not a file")
    resp = api.post(f"/jobs/{job_id}/ablations", json=body, headers=api.admin)
    assert resp.status_code == 202, resp.text
    aid = resp.json()["ablation_id"]
    deadline = time.time() + 180
    while (view := api.get(f"/jobs/{job_id}/ablations/{aid}", headers=api.read).json())["state"] not in (
            "succeeded", "failed") and time.time() < deadline:
        time.sleep(0.5)
    assert view["state"] == "succeeded", view
    result = view["result"]
    arms = {a["name"]: a for a in result["arms"]}
    assert set(arms) == {"curated", "random", "only:01-exact_dedup_v1", "only:02-quality_rules_v1"}
    assert result["tokens"] == min(a["available_tokens"] for a in arms.values())
    assert all(len(a["runs"]) == 2 for a in arms.values())
    plot = api.get(f"/jobs/{job_id}/ablations/{aid}/plot.png", headers=api.read)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content[:4] == b"\x89PNG"
    assert [v["ablation_id"] for v in api.get(f"/jobs/{job_id}/ablations", headers=api.read).json()] == [aid]
    again = api.post(f"/jobs/{job_id}/ablations", json=body, headers=api.admin)
    assert again.status_code == 200 and again.json()["ablation_id"] == aid
    assert_error(api.get(f"/jobs/{job_id}/ablations/abl-000000000000", headers=api.read), 404, "ablation_not_found")


def test_a_dry_run_plans_on_the_cluster_and_launches_nothing(api):
    before = api.get("/jobs", headers=api.read).json()["items"]
    spec = {**SPEC, "name": "planned", "output": "planned"}
    resp = api.post("/jobs?dry_run=true", json=spec, headers=api.admin)
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert [s["stage"] for s in plan["stages"]] == ["input_v1", "exact_dedup_v1", "quality_rules_v1"]
    assert plan["input"]["rows"] == 6 and plan["stages"][0]["docs_in"] == 6
    assert plan["cluster"]["cpus"] >= 1 and plan["total"]["output_rows"] >= 1
    assert api.get("/jobs", headers=api.read).json()["items"] == before
    assert not (api.root / "runs" / "planned").exists()
    # The same stages over the same unchanged files: the plan is reused, whatever the name.
    again = api.post("/jobs?dry_run=true", json={**spec, "name": "other", "output": "other"}, headers=api.admin)
    assert again.status_code == 200 and again.json() == plan
    assert_error(api.post("/jobs?dry_run=true", json={**spec, "inputs": ["nothing/*.parquet"]}, headers=api.admin),
                 422, "plan_failed", "matches no file")
    assert not list((api.root / "home" / "specs").glob("plan-*"))  # its spec and plan files are gone
    (api.data / "short.txt").write_text("too short\n")
    bad = {**spec, "stages": [{"stage": "decontam_v1", "params": {"eval_sets": [{"name": "s", "path": "short.txt"}]}}]}
    assert_error(api.post("/jobs?dry_run=true", json=bad, headers=api.admin), 422, "plan_failed",
                 "has no item of 13 words")
    assert_error(api.post("/jobs?dry_run=true", json=spec, headers=api.read), 403, "forbidden")


def test_the_contamination_report_and_a_dropped_document_over_rest(api, done_job):
    items = [{"id": f"e{i}", "question": " ".join(f"tok{i}x{j}" for j in range(15))} for i in range(3)]
    (api.data / "evals").mkdir()
    (api.data / "evals" / "qa.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    texts = [f"{GOOD} {items[0]['question']}.", GOOD.replace("city", "village"), f"{items[2]['question']} {GOOD}"]
    write_shard(api.data / "dc" / "a.parquet", texts, ids=["c0", "c1", "c2"])
    spec = {"name": "dc", "inputs": ["dc/*.parquet"], "output": "dc",
            "stages": [{"stage": "decontam_v1", "params": {"eval_sets": [
                {"name": "qa", "path": "evals/qa.jsonl", "fields": ["question"], "id_field": "id"}]}}]}
    resp = submit(api, spec)
    assert resp.status_code == 201, resp.text
    job = wait_for(api, resp.json()["job_id"])
    assert job["state"] == "succeeded", job
    body = api.get(f"/jobs/{job['job_id']}/contamination", headers=api.read).json()
    [stage] = body["stages"]
    assert stage["stage"] == "01-decontam_v1" and stage["ready"] and stage["action"] == "drop"
    report = stage["report"]
    assert (report["documents_checked"], report["documents_matched"]) == (3, 2)
    assert [(i["item"], i["documents"], i["best_overlap"]) for i in report["items"]] == [("e0", 1, 1.0),
                                                                                         ("e2", 1, 1.0)]
    lineage = api.get(f"/jobs/{job['job_id']}/documents/c2", headers=api.read).json()
    assert lineage["outcome"] == "dropped" and lineage["reason"] == "decontam.eval_overlap"
    assert lineage["stages"][-1]["detail"] == {"eval_set": "qa", "eval_item": "e2"}
    assert_error(api.get(f"/jobs/{done_job['job_id']}/contamination", headers=api.read), 404, "stage_not_found",
                 "has no decontam_v1 stage")


def test_a_fit_artifact_downloads_with_the_sha256_job_json_records(api):
    pytest.importorskip("fasttext")
    import itertools

    from workers.demo_corpus import _stdlib_docstrings

    texts = [d["text"] for d in itertools.islice(_stdlib_docstrings(), 3000) if len(d["text"]) > 300][:160]
    write_shard(api.data / "ps" / "a.parquet", texts, ids=[f"p{i}" for i in range(len(texts))])
    spec = {"name": "ps", "inputs": ["ps/*.parquet"], "output": "ps",
            "stages": [{"stage": "preselect_v1", "params": {"sample": 120, "max_chars": 300, "min_per_class": 5,
                                                            "calibration_only": True}}]}
    resp = submit(api, spec)
    assert resp.status_code == 201, resp.text
    job = wait_for(api, resp.json()["job_id"], timeout=300)
    assert job["state"] == "succeeded", job
    job_id = job["job_id"]
    listed = api.get(f"/jobs/{job_id}/artifacts", headers=api.read).json()
    recorded = json.loads((api.root / "runs" / "ps" / "job.json").read_text())["artifacts"]
    assert listed == recorded and "preselect.bin" in listed["01-preselect_v1"]
    assert_error(api.get(f"/jobs/{job_id}/artifacts/01-preselect_v1/preselect.bin", headers=api.read), 403,
                 "forbidden", "read-only")
    resp = api.get(f"/jobs/{job_id}/artifacts/01-preselect_v1/preselect.bin", headers=api.admin)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == resp.headers["x-content-sha256"] == \
        listed["01-preselect_v1"]["preselect.bin"]
    assert api.get(f"/jobs/{job_id}/manifest", headers=api.read).json()["output"]["rows"] == len(texts)  # kept all
    assert_error(api.get(f"/jobs/{job_id}/artifacts/01-preselect_v1/calibration.jsonx", headers=api.admin), 404,
                 "file_not_found")
    assert_error(api.get(f"/jobs/{job_id}/artifacts/01-preselect_v1/preselect.bin"), 401, "unauthorized")
