"""A bucketed fit vs the single-node fit, on the same score files, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_fit_buckets.py \\
        --docs 1000000 --shards 20 --buckets 8 [--workdir /tmp] [--input DIR] \\
        [--stage exact_dedup_v1 --exact-copies 0.05]

1. N synthetic ~2 kB documents, 1% planted near-copies (``bench_minhash_scale.generate``;
   ``--input`` reuses a folder of shards made before, ``--parquet`` takes one file, e.g.
   the peers' synthetic corpus: ``python ../shared/peers/corpus.py --synthetic 20000``).
   ``--exact-copies`` adds that fraction of verbatim copies.
2. The whole ``--stage`` job (``minhash_dedup_v1``, ``exact_dedup_v1`` or
   ``concept_prune_v1`` with the model2vec embedder) with ``execution.fit_buckets`` = B on a
   local Ray cluster: the scoring pass writes the keys (band keys, text hashes) by bucket;
   concept clusters write theirs in the fit, after k-means.
3. The fit alone, twice over the job's score files: bucketed (B Ray tasks, then the merge
   in the driver) and single-node (``fit_buckets`` 1: one DuckDB in the driver, as before),
   each in a fresh process with the memory sampler of ``bench_minhash_scale``; ``--single-first`` swaps the
   order. A fit whose spill leaves less than ``--min-free-gb`` of disk is stopped and
   reported as such.
4. The two fit tables compared row for row, and the per-bucket costs the extrapolation
   uses (keys per bucket, slowest task).
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_minhash_scale import MemorySampler, generate, measured  # noqa: E402

from workers.fits import run_fit  # noqa: E402
from workers.job import build_stages, run_job  # noqa: E402
from workers.job_folder import JobFolder  # noqa: E402
from workers.passes import connect_ray, run_tasks  # noqa: E402
from workers.planner import plan_passes  # noqa: E402
from workers.shards import preflight, units_from_record  # noqa: E402
from workers.spec import JobSpec, parse_spec  # noqa: E402

# Concept clusters embed with the static (model2vec) embedder: MiniLM would take hours at 1 M.
STAGE_PARAMS = {"concept_prune_v1": {"embedder": {"kind": "model2vec"}}}


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
    """Run the stage's fit again over the finished job's score files with ``buckets``."""
    folder = JobFolder(spec.output)
    stages = build_stages(spec)
    units = units_from_record(preflight(spec), folder.job()["units"])
    # The fit that runs in buckets (concept clusters: after their train fit).
    step = next(p.fit_after for p in plan_passes(stages) if p.fit_after is not None
                and p.fit_after.method == (stages[p.fit_after.stage_index].regroup_fit or p.fit_after.method))
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
                "error": f"stopped: under {floor / 2**30:.0f} GiB of disk left (its spill)"}
    finally:
        guard.running = False
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    marker = json.loads(folder.marker(step.name).read_text())
    keep = folder.root.parent / f"fit-{buckets}.parquet"
    shutil.copyfile(folder.fit(step.stage_index, step.stage, step.method), keep)
    return {"seconds": seconds, "peak": sampler.peak_used, "rss": sampler.peak_rss, "table": str(keep),
            "buckets": marker.get("buckets")}


def fit_in_child(spec_file: Path, buckets: int, memory_mb: int, min_free_gb: float) -> dict:
    """``fit_alone`` in a fresh process on the same Ray cluster, so its memory is the fit's
    alone (the job's driver keeps Arrow's memory pool)."""
    import ray

    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, __file__, "--fit-only", str(spec_file), "--buckets", str(buckets),
                          "--task-memory-mb", str(memory_mb), "--min-free-gb", str(min_free_gb)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["table"] = pq.read_table(result["table"]) if result.get("table") else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--stage", choices=["minhash_dedup_v1", "exact_dedup_v1", "concept_prune_v1"],
                    default="minhash_dedup_v1")
    ap.add_argument("--exact-copies", type=float, default=0.0, help="fraction of verbatim copies to plant")
    ap.add_argument("--task-memory-mb", type=int, default=2048)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--input", type=Path, help="a folder of shards generated before (skips step 1)")
    ap.add_argument("--parquet", type=Path, help="one Parquet file of id, text (e.g. the peers' synthetic corpus or "
                    "the web pool) instead of generated shards")
    ap.add_argument("--unit-rows", type=int, help="execution.unit_rows (default: the job's)")
    ap.add_argument("--single-first", action="store_true")
    ap.add_argument("--fit-only", type=Path, help=argparse.SUPPRESS)  # a spec file: run one fit, print JSON
    ap.add_argument("--drop-outputs", action="store_true", help="delete the job's output shards before the fits")
    ap.add_argument("--min-free-gb", type=float, default=4, help="stop a fit whose spill leaves less disk than this")
    args = ap.parse_args()
    if args.fit_only:
        connect_ray()
        spec = JobSpec.model_validate_json(args.fit_only.read_text())
        print(json.dumps(fit_alone(spec, args.buckets, args.task_memory_mb, int(args.min_free_gb * 2**30))))
        return
    work = Path(tempfile.mkdtemp(prefix="curate-buckets-", dir=args.workdir))
    try:
        source = args.input
        if args.parquet:
            source = work / "in"
            source.mkdir()
            (source / args.parquet.name).symlink_to(args.parquet.resolve())
        if source is None:
            source = work / "in"
            source.mkdir()
            t = time.perf_counter()
            planted = generate(source, args.docs, args.shards, exact=args.exact_copies)
            print(f"generated {args.docs:,} docs ({planted:,} planted) in {time.perf_counter() - t:.0f} s", flush=True)
        connect_ray()
        spec = parse_spec({"name": "buckets", "inputs": [str(source / "*.parquet")], "output": str(work / "out"),
                           "stages": [{"stage": args.stage, "params": STAGE_PARAMS.get(args.stage, {})}],
                           "execution": {"fit_buckets": args.buckets, "fit_task_memory_mb": args.task_memory_mb,
                                         "unit_rows": args.unit_rows}})
        manifest, wall, sampler = measured(lambda: run_job(spec, progress=False))
        stage_dir = JobFolder(spec.output).stage_dir(1, args.stage)
        sizes = {name: sum(f.stat().st_size for f in (stage_dir / name).rglob("*") if f.is_file())
                 for name in ("scores-embed" if args.stage == "concept_prune_v1" else "scores", "buckets/keys",
                              "decisions")}
        print("disk: " + ", ".join(f"{k} {v / 2**30:.2f} GiB ({v / docs_in:,.0f} B/doc)" for k, v in sizes.items())
              if (docs_in := manifest["funnel"][1]["docs_in"]) else "", flush=True)
        if args.drop_outputs:  # room for the fits' spill on a small disk; the fits read scores only
            shutil.rmtree(JobFolder(spec.output).data_dir)
        docs = manifest["funnel"][1]["docs_in"]
        print(f"job: {docs:,} docs, {manifest['funnel'][1]['dropped']:,} removed, {wall:.0f} s wall, peak machine "
              f"memory above start {sampler.peak_used / 2**30:.2f} GiB", flush=True)
        order = [1, args.buckets] if args.single_first else [args.buckets, 1]
        (work / "spec.json").write_text(spec.model_dump_json())
        runs = {b: fit_in_child(work / "spec.json", b, args.task_memory_mb, args.min_free_gb) for b in order}
        done = [r["table"] for r in runs.values() if r["table"] is not None]
        same = len(done) == 2 and done[0].equals(done[1])
        print("\n| fit | seconds | peak machine memory above start | largest process RSS | fit rows |")
        print("|---|---:|---:|---:|---:|")
        for b in (1, args.buckets):
            r = runs[b]
            name = f"bucketed, {b} Ray tasks + merge" if b > 1 else "single-node (concept: one bucket task)" \
                if args.stage == "concept_prune_v1" else "single-node (one DuckDB in the driver)"
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
