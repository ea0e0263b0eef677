"""Latency of ``GET /jobs/{id}`` under 50 concurrent clients while a job runs.

Starts ``curate serve`` (its own local Ray head) on a temporary home, submits a job
over a generated corpus big enough to run for a while, and in the same run measures:

  * ``GET /healthz`` under the same load while the job runs (the floor: routing,
    auth-free, no state);
  * ``GET /jobs/{id}`` while the job runs (auth, state and per-stage progress);
  * ``GET /jobs/{id}`` after the job finished.

    python bench/bench_api.py [--clients 50] [--shards 12] [--docs 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.local_server import LocalServer  # noqa: E402

WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "with", "for", "as", "on", "was", "by", "it", "be", "at",
    "from", "this", "are", "have", "data", "model", "river", "bridge", "history", "city", "museum", "stone",
]


def build_corpus(folder: Path, shards: int, docs: int) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for s in range(shards):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 600))) + "." for _ in range(docs)]
        ids = [f"s{s}-{i}" for i in range(docs)]
        pq.write_table(pa.table({"id": ids, "text": texts}), folder / f"s{s:02d}.parquet")


async def hammer(client: httpx.AsyncClient, url: str, headers: dict, clients: int, until) -> list[float]:
    latencies: list[float] = []

    async def one():
        while not until():
            start = time.perf_counter()
            r = await client.get(url, headers=headers)
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


def row(name: str, condition: str, lat: list[float], seconds: float) -> str:
    ms = sorted(x * 1000 for x in lat)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"| {name} | {condition} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.1f} "
            f"| {len(ms) / seconds:,.0f} |")


async def measure(base: str, auth: dict, clients: int) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        spec = {"name": "bench", "inputs": ["*.parquet"], "output": "bench",
                "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]}
        job = (await client.post(f"{base}/jobs", json=spec, headers=auth)).json()
        job_url = f"{base}/jobs/{job['job_id']}"

        async def state() -> str:
            return (await client.get(job_url, headers=auth)).json()["state"]

        while await state() == "queued":
            await asyncio.sleep(0.2)
        rows = []
        t_end = time.monotonic() + 5
        start = time.monotonic()
        lat = await hammer(client, f"{base}/healthz", {}, clients, lambda: time.monotonic() > t_end)
        rows.append(row("GET /healthz", "job running", lat, time.monotonic() - start))

        running = {"v": True}

        async def watch():
            while running["v"]:
                running["v"] = (await state()) in ("queued", "running")
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        start = time.monotonic()
        lat = await hammer(client, job_url, auth, clients, lambda: not running["v"])
        rows.append(row("GET /jobs/{id}", "job running", lat, time.monotonic() - start))
        await watcher
        final = await state()
        t_end = time.monotonic() + 5
        start = time.monotonic()
        lat = await hammer(client, job_url, auth, clients, lambda: time.monotonic() > t_end)
        rows.append(row("GET /jobs/{id}", f"job {final}", lat, time.monotonic() - start))
    print(f"| route | condition | requests | p50 ms | p99 ms | max ms | req/s |  ({clients} concurrent clients)")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--docs", type=int, default=4000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-api-"))
    build_corpus(work / "data", args.shards, args.docs)
    try:
        # RAY_ADDRESS unset: the server starts (and stops) its own local Ray head.
        with LocalServer(work / "home", work / "data", unset=("RAY_ADDRESS",), log=work / "serve.log",
                         ) as server:
            asyncio.run(measure(server.base, server.auth, args.clients))
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
