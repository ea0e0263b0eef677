"""`curate plan` against the runs it plans: estimate vs measured, per stage and in total.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_plan.py [--data ../shared/data] [--copies 20]

Two jobs, each planned with `curate plan` and then run with `curate run` (a local Ray
cluster, every CPU) in this invocation:

* **web**: the README's web.yaml (exact dedup + Gopher rules) over the web pool copied
  ``--copies`` times into as many shards (each copy's texts made distinct by a suffix, so
  the work grows without making exact duplicates);
* **demo**: the `curate demo` job (7 stages, three of them loading models) on its own
  corpus (``--demo-docs`` documents), whose spec `curate demo` writes.

Measured: the job's wall time as `curate run` takes it (Ray start-up included: the plan
does not count it, and the table says how large it is), the documents each stage kept,
and the bytes of scores + lineage and of outputs in the job folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.cost_plan import plan  # noqa: E402
from workers.job_folder import JobFolder  # noqa: E402
from workers.spec import load_spec, local_paths  # noqa: E402


def cli(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"curate {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - start


def folder_bytes(root: Path) -> tuple[int, int]:
    stages = sum(f.stat().st_size for f in (root / "stages").rglob("*.parquet")
                 if f.parent.name in ("scores", "decisions") or f.parent.name.startswith("scores-"))
    return stages, sum(f.stat().st_size for f in (root / "data").rglob("*.parquet"))


def compare(name: str, spec_file: Path, sample: int) -> list[str]:
    spec = local_paths(load_spec(spec_file))
    started = time.perf_counter()
    p = plan(spec, sample=sample)
    planning = time.perf_counter() - started
    shutil.rmtree(spec.output, ignore_errors=True)  # a fresh run, not a resume from markers
    _, wall = cli("run", str(spec_file), "--no-progress")
    folder = JobFolder(spec.output)
    funnel = {f["stage"]: f for f in folder.funnel()}
    stage_bytes, output_bytes = folder_bytes(Path(spec.output))
    work = sum(folder.read_marker(m.parent.name, m.stem).get("seconds", 0.0)
               for m in (Path(spec.output) / "_done").rglob("*.json") if m.parent.name != "_done")
    rows = [f"| {name} | stage | kept, planned | kept, run | CPU s, planned | CPU s in steps, run |",
            "|---|---|---:|---:|---:|---:|"]
    for s in p["stages"]:
        real = funnel[s["stage"]]
        steps = sum(folder.read_marker(m.parent.name, m.stem).get("seconds", 0.0)
                    for m in (Path(spec.output) / "_done").glob(f"{s['index']:02d}-{s['stage']}.*/*.json"))
        rows.append(f"| | {s['stage']} | {s['docs_out']:,} | {real['kept']:,} | {s['cpu_hours'] * 3600:.1f} | "
                    f"{steps:.1f} |")
    t = p["total"]
    rows += ["", f"| {name}: total | planned | run |", "|---|---:|---:|",
             f"| documents out | {t['output_rows']:,} | {funnel[p['stages'][-1]['stage']]['kept']:,} |",
             f"| CPU seconds in per-unit steps and fits | {t['cpu_hours'] * 3600:.1f} | {work:.1f} |",
             f"| wall seconds (run: `curate run`, Ray start-up and scheduling included) | "
             f"{t['wall_hours'] * 3600:.1f} | {wall:.1f} |",
             f"| scores + lineage MiB | {(t['disk_bytes'] - t['output_bytes']) / 2**20:.1f} | "
             f"{stage_bytes / 2**20:.1f} |",
             f"| outputs MiB | {t['output_bytes'] / 2**20:.1f} | {output_bytes / 2**20:.1f} |",
             f"| planning seconds (sample of {p['input']['sample']}) | {planning:.1f} | |"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--demo-docs", type=int, default=1500)
    ap.add_argument("--sample", type=int, default=400)
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    tables = []
    pool = Path(args.data) / "web" / "combined_web_pool.parquet"
    if pool.exists():
        t = pq.read_table(pool, columns=["id", "text"])
        (work / "web").mkdir()
        for k in range(args.copies):
            texts = [None if x is None else f"{x} (copy {k})" if x.strip() else x for x in t["text"].to_pylist()]
            pq.write_table(pa.table({"id": [f"{k}-{i}" for i in t["id"].to_pylist()], "text": texts}),
                           work / "web" / f"pool-{k:03d}.parquet")
        spec = work / "web.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "web-pool-v1", "inputs": [str(work / "web" / "*.parquet")], "output": str(work / "runs" / "web"),
            "stages": [{"stage": "exact_dedup_v1"},
                       {"stage": "quality_rules_v1", "params": {"min_words": 50, "max_bullet_line_fraction": 0.9}}]}))
        tables.append(compare(f"web pool × {args.copies} ({t.num_rows * args.copies:,} docs)", spec, args.sample))
    else:
        print(f"web job skipped: {pool} is absent")
    if not args.skip_demo:
        out, _ = cli("demo", "--out", str(work / "demo"), "--max-docs", str(args.demo_docs), "--no-progress")
        tables.append(compare(f"demo ({args.demo_docs} docs)", work / "demo" / "demo.yaml", args.sample))
    for rows in tables:
        print("\n".join(rows) + "\n")
    print(json.dumps({"work": str(work)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
