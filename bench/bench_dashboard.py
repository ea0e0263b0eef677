"""Dashboard page render times on a large job: N synthetic ~2 kB documents (the MinHash scale
run's corpus) through exact dedup + MinHash + Gopher rules, launched through a real
`curate serve`; then each page is fetched with a session cookie, and the same data over
the REST API as the baseline measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_dashboard.py [--docs 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_minhash_scale import generate  # noqa: E402

from service.local_server import LocalServer  # noqa: E402


def timed(client: httpx.Client, method: str, url: str, runs: int, **kwargs) -> tuple[float, float, int]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        r = client.request(method, url, **kwargs)
        seconds.append(time.perf_counter() - started)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return statistics.median(seconds), max(seconds), len(r.content)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        started = time.perf_counter()
        generate(data, args.docs, args.shards)
        print(f"generated {args.docs:,} documents in {time.perf_counter() - started:.0f} s")
        home, log = Path(tmp) / "home", Path(tmp) / "serve.log"
        with LocalServer(home, data, env={"CURATE_POLL_SECONDS": "1"}, log=log) as srv:
            spec = {"name": "scale", "inputs": ["*.parquet"], "output": "scale",
                    "stages": [{"stage": "exact_dedup_v1"}, {"stage": "minhash_dedup_v1"},
                               {"stage": "quality_rules_v1"}]}
            job = httpx.post(f"{srv.base}/jobs", json=spec, headers=srv.auth, timeout=60).json()["job_id"]
            started = time.perf_counter()
            while (state := httpx.get(f"{srv.base}/jobs/{job}", headers=srv.auth).json()["state"]) != "succeeded":
                assert state in ("queued", "running"), srv.log()
                time.sleep(2)
            print(f"job {job} finished in {time.perf_counter() - started:.0f} s\n")
            web = httpx.Client(base_url=srv.base, timeout=300)
            key = srv.auth["Authorization"].split()[1]
            assert web.post("/ui/login", data={"key": key, "next": "/ui/jobs"}).status_code == 303
            api = httpx.Client(base_url=srv.base, headers=srv.auth, timeout=300)
            dup = api.get(f"/jobs/{job}/documents", params={"stage": "minhash_dedup_v1", "decision": "drop",
                                                            "limit": 1}).json()["items"][0]["doc_id"]
            rows = [
                ("page: jobs", web, "GET", "/ui/jobs", {}),
                ("page: job overview", web, "GET", f"/ui/jobs/{job}", {}),
                ("page: stage (8 histograms, what-if, samples)", web, "GET", f"/ui/jobs/{job}/stages/3", {}),
                ("page: stage, one shard", web, "GET", f"/ui/jobs/{job}/stages/3?shard=0", {}),
                ("page: document with its MinHash cluster", web, "GET", f"/ui/jobs/{job}/documents/{dup}", {}),
                ("page: compare the job with itself", web, "GET", f"/ui/compare?a={job}&b={job}", {}),
                ("API: GET /jobs/{id} (baseline)", api, "GET", f"/jobs/{job}", {}),
                ("API: GET /jobs/{id}/stats (baseline)", api, "GET", f"/jobs/{job}/stats", {}),
                ("API: preview-selection (what-if, baseline)", api, "POST", f"/jobs/{job}/preview-selection",
                 {"json": {"stage": "quality_rules_v1", "params": {"min_words": 30}}}),
                ("API: GET /jobs/{id}/documents/{doc} (baseline)", api, "GET", f"/jobs/{job}/documents/{dup}", {}),
            ]
            print(f"{args.docs:,} documents, {args.shards} shards; median and max of {args.runs} fetches\n")
            print("| request | median s | max s | bytes |")
            print("|---|---|---|---|")
            for name, client, method, url, kwargs in rows:
                median, worst, size = timed(client, method, url, args.runs, **kwargs)
                print(f"| {name} | {median:.3f} | {worst:.3f} | {size:,} |")


if __name__ == "__main__":
    main()
