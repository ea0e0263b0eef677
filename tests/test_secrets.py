"""No secret is written anywhere (issue 17): the service's API key and a rephrasing
endpoint's key appear in no file the service or its jobs write (job folders, specs, the
catalog, the log), in no API answer, and in no driver log; the endpoint did receive its
key, so the check is not vacuous."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import GOOD, send_json, wait_for_job, write_shard

from service.local_server import LocalServer

pytest.importorskip("httpx")


class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that counts tokens and then fails every generation."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(self.headers.get("Authorization", ""))
        if self.path == "/extras/tokenize":
            status, answer = 200, {"tokens": list(range(len(body["input"].split())))}
        else:
            status, answer = 500, {"error": {"message": "upstream broke"}}
        send_json(self, status, answer)

    def log_message(self, *args):
        pass


def test_no_key_is_written_to_any_file_log_or_answer(tmp_path):
    endpoint_key = f"sk-curate-test-{secrets.token_hex(12)}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    write_shard(tmp_path / "data" / "a.parquet", [GOOD + f" Document {i}." for i in range(12)] + ["Too short."],
                ids=[f"d{i}" for i in range(13)])
    rephrase = {"backend": "openai", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "m",
                "api_key_env": "CURATE_TEST_ENDPOINT_KEY", "max_retries": 0, "backoff_s": 0, "chunk_tokens": 64,
                "styles": ["medium"], "max_new_tokens": 32}
    answers = []
    # Its own Ray head (no RAY_ADDRESS), so the jobs' drivers and workers get the endpoint key.
    env = {"CURATE_TEST_ENDPOINT_KEY": endpoint_key, "CURATE_POLL_SECONDS": "0.3"}
    with LocalServer(tmp_path / "home", tmp_path / "data", env=env, unset=("RAY_ADDRESS",),
                     log=tmp_path / "serve.log") as api:
        auth = api.auth
        jobs = {}
        for name, stages in (("rules", [{"stage": "quality_rules_v1"}]),
                             ("wrap", [{"stage": "rephrase_v1", "params": rephrase}])):
            resp = httpx.post(f"{api.base}/jobs", headers=auth, timeout=30,
                              json={"name": name, "inputs": ["*.parquet"], "output": name, "stages": stages})
            assert resp.status_code == 201, resp.text
            jobs[name] = resp.json()["job_id"]
        for job_id in jobs.values():
            wait_for_job(api.base, auth, job_id)
            for path in ("", "/logs", "/stats", "/manifest", "/documents", "/drops", "/documents/d12"):
                answers.append(httpx.get(f"{api.base}/jobs/{job_id}{path}", headers=auth).text)
        wrap = httpx.get(f"{api.base}/jobs/{jobs['wrap']}", headers=auth).json()
        answers += [json.dumps(wrap), httpx.get(f"{api.base}/jobs", headers=auth).text,
                    httpx.get(f"{api.base}/jobs/nope", headers=auth).text,
                    httpx.get(f"{api.base}/jobs", headers={"Authorization": f"Bearer {endpoint_key}"}).text]
    server.shutdown()
    assert f"Bearer {endpoint_key}" in _Endpoint.seen  # the key was really used
    assert wrap["state"] == "failed" and "upstream broke" in (wrap["error"] or ""), wrap
    api_key = auth["Authorization"].split()[1]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "serve.log"] + [tmp_path / "serve.log"]
    assert any(p.name == "job.json" for p in files) and any(p.suffix == ".duckdb" for p in files)
    for secret in (endpoint_key, api_key):
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes() and p.name != "serve.log"]
        assert not leaked, f"a key was written to {leaked}"
        assert not [a for a in answers if secret in a]
    log = (tmp_path / "serve.log").read_text()
    assert endpoint_key not in log and log.count(api_key) == 1  # printed once, at the first start
