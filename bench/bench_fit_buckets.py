"""The bucketed MinHash fit vs the single-node fit, on the same score files, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_fit_buckets.py \\
        --docs 1000000 --shards 20 --buckets 8 [--workdir /tmp] [--input DIR]

1. N synthetic ~2 kB documents, 1% planted near-copies (``bench_minhash_scale.generate``;
   ``--input`` reuses a folder of shards made before).
2. The whole ``minhash_dedup_v1`` job with ``execution.fit_buckets`` = B on a local Ray
   cluster: the scoring pass writes the band keys by bucket.
3. The fit alone, twice over the job's score files: bucketed (B Ray tasks, then the merge
   in the driver) and single-node (``fit_buckets`` 1: one DuckDB in the driver, as before),
   each with the memory sampler of ``bench_minhash_scale``; ``--single-first`` swaps the
   order. A fit whose spill leaves less than ``--min-free-gb`` of disk is stopped and
   reported as such.
4. The two fit tables compared row for row, and the per-bucket costs the extrapolation
   uses (keys per bucket, slowest task).
"""

from __future__ import annotations

import _thread
import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_minhash_scale import MemorySampler, generate  # noqa: E402

from workers.fits import run_fit  # noqa: E402
from workers.job import build_stages, run_job  # noqa: E402
from workers.job_folder import JobFolder  # noqa: E402
from workers.passes import connect_ray, run_tasks  # noqa: E402
from workers.planner import plan_passes  # noqa: E402
from workers.shards import preflight, units_from_record  # noqa: E402
from workers.spec import parse_spec  # noqa: E402


class DiskGuard(threading.Thread):
    """Interrupts the run (KeyboardInterrupt in the main thread) when the job folder's disk
    has less than ``floor`` bytes free: a fit's spill must not fill a shared machine."""

    def __init__(self, path: Path, floor: int) -> None:
        super().__init__(daemon=True)
        self.path, self.floor, self.tripped, self.running = path, floor, False, True

    def run(self) -> None:
        while self.running:
            if shutil.disk_usage(self.path).free < self.floor:
                self.tripped = True
                _thread.interrupt_main()
                return
            time.sleep(0.5)


def fit_alone(spec, buckets: int, memory_mb: int, floor: int) -> dict:
    """Run the MinHash fit again over the finished job's score files with ``buckets``."""
    folder = JobFolder(spec.output)
    stages = build_stages(spec)
    units = units_from_record(preflight(spec), folder.job()["units"])
    step = next(p.fit_after for p in plan_passes(stages) if p.fit_after is not None)
    folder.update_job(fit_buckets=buckets)
    folder.marker(step.name).unlink()
    sampler, guard = MemorySampler(), DiskGuard(folder.root, floor)
    sampler.start()
    guard.start()
    started = time.perf_counter()
    try:
        run_fit(folder, units, step, stages, map_tasks=run_tasks, task_memory_mb=memory_mb)
    except KeyboardInterrupt:
        if not guard.tripped:
            raise
        return {"seconds": time.perf_counter() - started, "peak": sampler.peak_used, "rss": sampler.peak_rss,
                "table": None, "error": f"stopped: under {floor / 2**30:.0f} GiB of disk left (its spill)"}
    finally:
        guard.running = False
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    marker = json.loads(folder.marker(step.name).read_text())
    return {"seconds": seconds, "peak": sampler.peak_used, "rss": sampler.peak_rss,
            "table": pq.read_table(folder.fit(step.stage_index, step.stage)), "buckets": marker.get("buckets")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--task-memory-mb", type=int, default=2048)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--input", type=Path, help="a folder of shards generated before (skips step 1)")
    ap.add_argument("--single-first", action="store_true")
    ap.add_argument("--min-free-gb", type=float, default=4, help="stop a fit whose spill leaves less disk than this")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate-buckets-", dir=args.workdir))
    try:
        source = args.input
        if source is None:
            source = work / "in"
            source.mkdir()
            t = time.perf_counter()
            planted = generate(source, args.docs, args.shards)
            print(f"generated {args.docs:,} docs ({planted:,} planted) in {time.perf_counter() - t:.0f} s", flush=True)
        connect_ray()
        spec = parse_spec({"name": "buckets", "inputs": [str(source / "*.parquet")], "output": str(work / "out"),
                           "stages": [{"stage": "minhash_dedup_v1"}],
                           "execution": {"fit_buckets": args.buckets, "fit_task_memory_mb": args.task_memory_mb}})
        sampler = MemorySampler()
        sampler.start()
        t = time.perf_counter()
        manifest = run_job(spec, progress=False)
        wall = time.perf_counter() - t
        sampler.running = False
        sampler.join()
        docs = manifest["funnel"][1]["docs_in"]
        print(f"job: {docs:,} docs, {manifest['funnel'][1]['dropped']:,} removed, {wall:.0f} s wall, peak machine "
              f"memory above start {sampler.peak_used / 2**30:.2f} GiB", flush=True)
        order = [1, args.buckets] if args.single_first else [args.buckets, 1]
        floor = args.min_free_gb * 2**30
        runs = {b: fit_alone(spec, b, args.task_memory_mb, floor) for b in order}
        done = [r["table"] for r in runs.values() if r["table"] is not None]
        same = len(done) == 2 and done[0].equals(done[1])
        print("\n| fit | seconds | peak machine memory above start | largest process RSS | fit rows |")
        print("|---|---:|---:|---:|---:|")
        for b in (1, args.buckets):
            r = runs[b]
            name = "single-node (one DuckDB in the driver)" if b == 1 else f"bucketed, {b} Ray tasks + merge"
            rows = f"{r['table'].num_rows:,}" if r["table"] is not None else r["error"]
            print(f"| {name} | {r['seconds']:.1f} | {r['peak'] / 2**30:.2f} GiB | {r['rss'] / 2**30:.2f} GiB "
                  f"| {rows} |")
        print(f"\nfit tables identical: {same if len(done) == 2 else 'not compared (a fit did not finish)'}")
        print(f"bucket facts: {json.dumps(runs[args.buckets].get('buckets'))}")
        if len(done) == 2 and not same:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
