"""`minhash_dedup_v1` on one large near-duplicate cluster (a boilerplate page crawled N
times, differing only in a counter): every copy shares a bucket in every band. Runs the
stage in-process (`workers.local.run_stages`) for each N, in this checkout and, with
--baseline, in another checkout in the same run (a subprocess per run, so each imports its
own code).

    git worktree add /tmp/baseline <commit>
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_minhash_buckets.py --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import pyarrow as pa
from workers.local import run_stages
page = ("The history of the city is long and varied, and many of its buildings still stand today. Visitors "
        "come to see the old bridge that was built with stone from the nearby hills, and they often stay to "
        "walk along the river.")
n = int(sys.argv[2])
docs = pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"{page} Copy number {i}." for i in range(n)]})
started = time.perf_counter()
run = run_stages(["minhash_dedup_v1"], docs)
print(json.dumps({"seconds": time.perf_counter() - started, "kept": run.funnel[-1]["kept"]}))
"""


def measure(tree: Path, n: int, timeout: int) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", ONE_RUN, str(tree), str(n)], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "kept": None, "error": f"> {timeout} s"}
    if out.returncode:
        return {"seconds": None, "kept": None, "error": out.stderr.strip().splitlines()[-1][:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="3000,6000,18000")
    ap.add_argument("--baseline", type=Path, help="another checkout, measured in the same run")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    trees = {"this checkout": ROOT} | ({f"baseline ({args.baseline})": args.baseline} if args.baseline else {})
    print("| copies in one cluster | code | seconds | kept |")
    print("|---:|---|---:|---:|")
    for n in map(int, args.sizes.split(",")):
        for name, tree in trees.items():
            r = measure(tree, n, args.timeout)
            seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else r["error"]
            print(f"| {n:,} | {name} | {seconds} | {r['kept']} |", flush=True)


if __name__ == "__main__":
    main()
