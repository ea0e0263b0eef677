"""``minhash_dedup_v1`` as a system for the peers harness (``../shared/peers``).

    OURS_CMD="python bench/peers_minhash.py" SYSTEMS="datatrove-t2 datasketch-b16r8-verify ours" \\
        bash ../shared/peers/run_all.sh

Runs the project's real job code (pre-flight, the planner's passes, ``UnitRunner`` steps,
the out-of-core fit, selection, lineage files) on the input split into ``--tasks``
shards, with a process pool of ``--tasks`` workers instead of a Ray cluster: the harness
times each system from a cold start, and Ray's start-up (~5 s) would measure Ray, not
the stage.
Leaves removed_ids.txt, clusters.tsv and metrics.json in --out, as the harness asks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.fits import run_fit  # noqa: E402
from workers.job import build_stages  # noqa: E402
from workers.job_folder import JobFolder  # noqa: E402
from workers.planner import plan_passes  # noqa: E402
from workers.shards import plan_units, preflight  # noqa: E402
from workers.spec import JobSpec, parse_spec  # noqa: E402
from workers.unit_steps import RunContext, UnitRunner  # noqa: E402

_RUNNER: UnitRunner | None = None


def _work(spec_json: str, job_id: str, unit, steps) -> dict | None:
    global _RUNNER
    if _RUNNER is None:
        spec = JobSpec.model_validate_json(spec_json)
        _RUNNER = UnitRunner(RunContext(job_id, JobFolder(spec.output), spec.columns.text, spec.columns.id,
                                        build_stages(spec)))
    return _RUNNER.run(unit, list(steps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="curate minhash_dedup_v1")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--params", default="{}", help="JSON stage params, e.g. '{\"bands\": 16, \"rows\": 8}'")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = pq.read_table(args.input, columns=["id", "text"])
        table = table.set_column(0, "id", table["id"].cast(pa.string()))
        per = -(-table.num_rows // args.tasks)
        for i in range(args.tasks):
            pq.write_table(table.slice(i * per, per), f"{tmp}/part-{i}.parquet")
        params = json.loads(args.params)
        spec = parse_spec({"name": "peers", "inputs": [f"{tmp}/part-*.parquet"], "output": f"{tmp}/job",
                           "stages": [{"stage": "minhash_dedup_v1", "params": params}]})
        folder = JobFolder(spec.output)
        folder.root.mkdir()
        shards = preflight(spec)
        units = plan_units(shards, max(s.rows for s in shards), args.tasks)  # one unit per shard
        stages = build_stages(spec)
        times = {}
        with ProcessPoolExecutor(args.tasks) as pool:
            for n, plan in enumerate(plan_passes(stages)):
                t0 = time.perf_counter()
                errors = [e for e in pool.map(_work, [spec.model_dump_json()] * len(units),
                                              [spec.job_id()] * len(units), units, [plan.steps] * len(units)) if e]
                if errors:
                    raise SystemExit(errors[0]["message"])
                times[f"pass_{n + 1}"] = round(time.perf_counter() - t0, 3)
                if plan.fit_after is not None:
                    t0 = time.perf_counter()
                    run_fit(folder, units, plan.fit_after, stages)
                    times["fit"] = round(time.perf_counter() - t0, 3)
        decisions = pa.concat_tables(pq.read_table(p) for p in sorted(
            (folder.stage_dir(1, "minhash_dedup_v1") / "decisions").glob("*.parquet")))
    removed = [d for d, k in zip(decisions["doc_id"].to_pylist(), decisions["decision"].to_pylist(), strict=True)
               if k == "drop"]
    (out / "removed_ids.txt").write_text("".join(f"{r}\n" for r in removed))
    with open(out / "clusters.tsv", "w") as f:
        for d, c in zip(decisions["doc_id"].to_pylist(), decisions["cluster_id"].to_pylist(), strict=True):
            if c is not None:
                f.write(f"{d}\t{c}\n")
    total = time.perf_counter() - started
    metrics = {"system": args.name, "docs": table.num_rows, "removed": len(removed),
               "signature_docs_per_s": round(table.num_rows / times["pass_1"], 1),
               "seconds": {**times, "total": round(total, 3)}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
