"""A regrouped fit (``Stage.regroup_fit``: concept clusters, whose key is the nearest
k-means centroid the stage's ``train`` fit wrote): the corpus-wide work as one task per
unit, then one per bucket, so no task holds the corpus.

1. One task per unit reads the unit's scores and the earlier fits' artifacts and writes
   its key rows (``Stage.regroup_keys``), hashed into ``fit_buckets`` buckets, a row group
   per bucket (``partition_rows``, as the scoring pass does for MinHash band keys).
2. One task per bucket reads its row groups from every unit's file and writes its part of
   the fit (``Stage.regroup_bucket``).

The fit then reads the buckets' results (``view.bucketed.groups``). A job with one bucket
runs the same two steps: that is the single-node fit, and a key's rows meet in one task
whatever the number of buckets, so the result does not change with it. The key files
(a second copy of every vector) are deleted once the buckets are done.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from filters.base import Bucketed, OverBudget, Stage, sql_list
from filters.registry import get_stage
from workers import atomic
from workers.bucketed_fit import TaskMap, _engine, _over_budget, _row_bytes, _run, partition_rows
from workers.job_folder import JobFolder
from workers.shards import Unit


def keys_task(stage: tuple[str, dict], unit_index: int, score_file: str, artifacts: str, buckets: int, out: str,
              memory_mb: int) -> dict:
    """Step 1: one unit's key rows, by bucket."""
    started = time.perf_counter()
    held = pq.ParquetFile(score_file).metadata.num_rows
    if not held:  # a unit no document reached (its columns may be untyped): no file
        return {"keys": 0, "per_bucket": [0] * buckets, "seconds": time.perf_counter() - started}
    error = _over_budget(f"unit {unit_index}'s scores", round(held * _row_bytes([score_file]) * 2), memory_mb)
    if error:
        return {"error": error}
    rows = get_stage(stage[0])(stage[1]).regroup_keys(pq.read_table(score_file), Path(artifacts))
    parts = partition_rows(rows, buckets)
    atomic.write_parquet_groups(parts, parts[0].schema, Path(out))
    return {"keys": rows.num_rows, "per_bucket": [p.num_rows for p in parts],
            "seconds": time.perf_counter() - started}


def group_task(stage: tuple[str, dict], key_files: list[str], bucket: int, buckets: int, out: str, scratch: str,
               memory_mb: int) -> dict:
    """Step 2: one bucket's part of the fit. DuckDB (half the budget, spilling beyond it)
    gives it the bucket's rows; what the stage holds in Python is checked against the other half."""
    started = time.perf_counter()
    with _engine(Path(scratch) / f"group-{bucket}", memory_mb) as sql:
        source = f"SELECT * EXCLUDE (bucket) FROM read_parquet({sql_list(key_files)}) WHERE bucket = {bucket}"
        try:
            table = get_stage(stage[0])(stage[1]).regroup_bucket(sql, source, memory_mb * 2**20 // 2)
        except OverBudget as exc:
            return {"error": _over_budget(f"bucket {bucket} of {buckets}: {exc.what}", exc.need, memory_mb)}
    atomic.write_parquet(table, Path(out))
    return {"rows": table.num_rows, "seconds": time.perf_counter() - started}


def run_regroup(folder: JobFolder, units: list[Unit], index: int, stage: Stage, phase: str, buckets: int,
                map_tasks: TaskMap, memory_mb: int) -> tuple[Bucketed, dict]:
    """Steps 1-2 over the scores of ``phase``; returns the buckets' result files for the
    fit and a summary for its marker."""
    root = folder.bucket_dir(index, stage.name)
    for step in ("keys", "groups", "scratch"):
        shutil.rmtree(root / step, ignore_errors=True)  # a killed fit's leftovers
    spec = (stage.name, stage.params.model_dump(mode="json"))
    artifacts = str(folder.artifacts(index, stage.name))
    key_files = [str(root / "keys" / f"{u.key}.parquet") for u in units]
    timing: dict[str, list[float]] = {}  # step -> [wall seconds, seconds summed over its tasks]
    keyed = _run(map_tasks, keys_task, [(spec, u.index, str(folder.scores(index, stage.name, u.key, phase)),
                                         artifacts, buckets, key_files[n], memory_mb)
                                        for n, u in enumerate(units)], memory_mb, timing)
    key_files = [f for f, r in zip(key_files, keyed, strict=True) if r["keys"]]
    busy = [b for b in range(buckets) if any(r["per_bucket"][b] for r in keyed)]
    group_files = [str(root / "groups" / f"b{b:05d}.parquet") for b in busy]
    groups = _run(map_tasks, group_task, [(spec, key_files, b, buckets, out, str(root / "scratch"), memory_mb)
                                          for b, out in zip(busy, group_files, strict=True)], memory_mb, timing)
    # The keys hold a second copy of every vector; the fit reads only the groups.
    shutil.rmtree(root / "keys", ignore_errors=True)
    summary = {"buckets": buckets, "keys": sum(r["keys"] for r in keyed),
               "largest_bucket_keys": int(np.sum([r["per_bucket"] for r in keyed], axis=0).max()),
               "groups": len(group_files), "slowest_task_seconds": round(max(r["seconds"] for r in keyed + groups), 3),
               "steps_wall_and_task_seconds": timing}
    return Bucketed(groups=[Path(f) for f in group_files]), summary
