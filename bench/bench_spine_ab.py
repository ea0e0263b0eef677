"""This checkout's spine vs another checkout's, interleaved on the same machine.

    python bench/bench_spine_ab.py --baseline /tmp/baseline [--rounds 3] [--corpus web]

Each round runs one fresh process per checkout (old, new, old, new, ...); each process
starts its own local Ray cluster and runs ``run_job`` of exact dedup + quality rules on
the web pool split into 4 shards, 3 times. The first run of a process warms Ray's
worker processes and is left out; the table shows the rest and their mean. Checkouts
from before the stage contract v2 (``workers.driver``) work too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "web" / "combined_web_pool.parquet"

CHILD = r'''
import json, os, sys, tempfile, time
try:
    from workers.job import run_job
    from workers.passes import connect_ray
except ImportError:  # before the stage contract v2
    from workers.driver import run_job, connect_ray
from workers.spec import parse_spec
connect_ray()
times, sha = [], None
for _ in range(3):
    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec({"name": "ab", "inputs": [sys.argv[1] + "/*.parquet"], "output": tmp + "/out",
                           "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]})
        t = time.perf_counter()
        sha = run_job(spec, progress=False)["files"][0]["sha256"]
        times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "sha": sha}))
'''


def run(checkout: Path, shards: Path) -> dict:
    import json

    env = {**os.environ, "PYTHONPATH": str(checkout), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(shards)], cwd=checkout, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not POOL.exists():
        raise SystemExit(f"{POOL} is absent (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        table = pq.read_table(POOL)
        per = -(-table.num_rows // 4)
        for i in range(4):
            pq.write_table(table.slice(i * per, per), f"{tmp}/part-{i}.parquet")
        results: dict[str, list[float]] = {"before": [], "after": []}
        shas = set()
        for _ in range(args.rounds):
            for name, checkout in (("before", args.baseline.resolve()), ("after", ROOT)):
                r = run(checkout, Path(tmp))
                results[name] += r["times"][1:]
                shas.add(r["sha"])
    print("| code | runs (s) | mean |\n|---|---|---:|")
    for name, times in results.items():
        print(f"| {name} | {', '.join(f'{t:.2f}' for t in times)} | {statistics.mean(times):.2f} |")
    print(f"\nsame output sha256 in every run: {len(shas) == 1}")


if __name__ == "__main__":
    main()
