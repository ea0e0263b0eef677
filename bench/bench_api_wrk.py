"""Throughput and tail latency of the API under ``wrk`` (a compiled load generator) while a job runs.

For this checkout, and for ``--baseline DIR`` (another checkout, e.g. ``git archive`` of an
older commit) in the same run, it starts ``curate serve`` with its own local Ray head,
submits a job over a generated corpus that keeps the two cores busy, waits until it runs,
and then measures with ``wrk --latency``:

  * ``GET /healthz`` at 100 connections (routing only: no auth, no state);
  * ``GET /jobs/{id}`` at 100 and at 500 connections (auth, rate limit, per-stage progress).

Each row says whether the job was still running when the measurement ended. The rate
limit is turned off (``CURATE_RATE_LIMIT_PER_SECOND=0``): wrk sends every request with
one key, far above what the limit allows a real client.

    apt-get install -y wrk
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_api_wrk.py \
        [--baseline DIR [--baseline-without httptools]] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_api import build_corpus  # noqa: E402
from service.local_server import LocalServer  # noqa: E402

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNIT[unit]


def wrk(url: str, connections: int, seconds: int, token: str | None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if len(latency) != 2:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _ms(latency["50"]), "p99": _ms(latency["99"]),
            "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}


def state(base: str, job_id: str, auth: dict) -> str:
    return httpx.get(f"{base}/jobs/{job_id}", headers=auth, timeout=60).json()["state"]


def hide(work: Path, packages: list[str]) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import <package>`` fail: the baseline
    then runs as on a machine without it (uvicorn falls back to h11 without httptools)."""
    shim = work / "hidden"
    for name in packages:
        (shim / name).mkdir(parents=True, exist_ok=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by bench_api_wrk')\n")
    return shim


def measure(label: str, slug: str, code: Path, work: Path, seconds: int, hidden: Path | None = None) -> list[str]:
    path = f"{hidden}{os.pathsep}{code}" if hidden else str(code)
    env = {"CURATE_RATE_LIMIT_PER_SECOND": "0", "PYTHONPATH": path}
    home = work / f"home-{slug}"
    rows = []
    os.chdir(code)  # `python -m service.cli` imports from the working directory before PYTHONPATH
    # RAY_ADDRESS unset: the server starts (and stops) its own local Ray head.
    with LocalServer(home, work / "data", env=env, unset=("RAY_ADDRESS",), log=work / f"serve-{slug}.log") as srv:
        spec = {"name": "bench", "inputs": ["*.parquet"], "output": f"bench-{slug}",
                "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]}
        job = httpx.post(f"{srv.base}/jobs", json=spec, headers=srv.auth, timeout=60).json()
        job_id = job["job_id"]
        while state(srv.base, job_id, srv.auth) == "queued":
            time.sleep(0.2)
        token = srv.auth["Authorization"]
        for route, conns, auth in (("/healthz", 100, None), (f"/jobs/{job_id}", 100, token),
                                   (f"/jobs/{job_id}", 500, token)):
            r = wrk(srv.base + route, conns, seconds, auth)
            now = state(srv.base, job_id, srv.auth)
            name = "GET /jobs/{id}" if route != "/healthz" else "GET /healthz"
            rows.append(f"| {label} | {name} | {conns} | job {now} | {r['requests']:,} | {r['rps']:,.0f} "
                        f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
        # The same route with the cores free: what the job's load costs the API.
        httpx.post(f"{srv.base}/jobs/{job_id}/cancel", headers=srv.auth, timeout=60)
        while state(srv.base, job_id, srv.auth) not in ("cancelled", "succeeded", "failed"):
            time.sleep(0.5)
        time.sleep(2)
        r = wrk(f"{srv.base}/jobs/{job_id}", 100, seconds, token)
        rows.append(f"| {label} | GET /jobs/{{id}} | 100 | job {state(srv.base, job_id, srv.auth)} "
                    f"| {r['requests']:,} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    ap.add_argument("--baseline-without", nargs="*", default=[], metavar="PACKAGE",
                    help="also measure the baseline with these packages hidden (e.g. httptools: as before it was "
                         "a dependency)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--docs", type=int, default=6000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="curate-bench-wrk-"))
    try:
        build_corpus(work / "data", args.shards, args.docs)
        rows = measure("this checkout", "new", ROOT, work, args.seconds)
        if args.baseline:
            rows += measure(f"baseline ({args.baseline})", "baseline", args.baseline.resolve(), work, args.seconds)
            if args.baseline_without:
                rows += measure(f"baseline without {', '.join(args.baseline_without)}", "baseline-without",
                                args.baseline.resolve(), work, args.seconds, hide(work, args.baseline_without))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrk -t2 --latency, {args.seconds} s per row, {os.cpu_count()} cores shared with the job")
    print("| code | route | connections | condition | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
