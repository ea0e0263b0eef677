"""Runs a stage's corpus-wide fit between passes: hands it the out-of-core view of its
scores and a fresh artifact folder, stores what it returns, hashes the files it wrote
and records them in job.json, then marks the fit done."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from filters.base import Stage
from workers import atomic
from workers.bucketed_fit import DEFAULT_TASK_MEMORY_MB, TaskMap, run_buckets, serial_map
from workers.fit_view import FileScoreView
from workers.job_folder import JobFolder, stage_folder_name
from workers.planner import Step, score_phases
from workers.regrouped_fit import run_regroup
from workers.shards import Unit


def first_fit(stage: Stage) -> str | None:
    return next((p.method for p in stage.phases if p.kind == "fit"), None)


def artifact_hashes(folder: JobFolder, index: int, stage: str) -> dict[str, str]:
    root = folder.artifacts(index, stage)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): atomic.sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def run_fit(folder: JobFolder, units: list[Unit], step: Step, stages: list[Stage], *,
            map_tasks: TaskMap = serial_map, task_memory_mb: int = DEFAULT_TASK_MEMORY_MB) -> None:
    """``map_tasks`` runs a bucketed fit's tasks (Ray tasks in a job) with at most
    ``task_memory_mb`` each."""
    if folder.done(step.name):
        return
    started = time.perf_counter()
    index, stage = step.stage_index, stages[step.stage_index]
    before = score_phases(stage, before=step.method)
    artifacts = folder.artifacts(index, stage.name)
    if step.method == first_fit(stage):
        # Leftovers of a fit killed mid-way go; a stage's later fits add to what its earlier
        # ones wrote (train → score → cut keeps the trained model).
        shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True, exist_ok=True)

    def other_stage(name: str) -> list[Path]:
        earlier = [i for i, s in enumerate(stages[:index]) if s.name == name]
        if not earlier:
            raise ValueError(f"stage {name!r} does not run before {stage.name} in this job")
        other = stages[earlier[-1]]
        phase = score_phases(other)[-1] if score_phases(other) else "score"
        return [folder.scores(earlier[-1], name, u.key, phase) for u in units]

    scratch = folder.scratch(index, stage.name)
    # A fit killed mid-way leaves its DuckDB spill files behind (tens of GB at scale): one
    # fit of a stage runs at a time (the folder's run lock), so whatever is there is stale.
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    buckets = folder.job().get("fit_buckets", 1)
    bucketed, bucket_facts = None, {}
    # A job folder scored before this stage could be bucketed has no key files for it: the
    # single-node fit gives the same result.
    if stage.bucket_by and buckets > 1 and before and all(folder.bucket_keys(index, stage.name, u.key).exists()
                                                          for u in units):
        bucketed, bucket_facts = run_buckets(folder, units, index, stage, before[-1], buckets, map_tasks,
                                             task_memory_mb)
    elif stage.regroup_fit == step.method and before:  # one bucket: the same tasks, the single-node fit
        bucketed, bucket_facts = run_regroup(folder, units, index, stage, before[-1], buckets, map_tasks,
                                             task_memory_mb)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        if before:
            files = [folder.scores(index, stage.name, u.key, before[-1]) for u in units]
            with FileScoreView(files, scratch=Path(tmp), other_stage=other_stage, bucketed=bucketed) as view:
                table = getattr(stage, step.method)(view, artifacts)
                rows = view.num_rows
        else:
            table, rows = getattr(stage, step.method)(None, artifacts), 0
    if table is not None:
        atomic.write_parquet(table, folder.fit(index, stage.name, step.method))
    hashes = artifact_hashes(folder, index, stage.name)
    if hashes:
        recorded = folder.job().get("artifacts", {})
        recorded[stage_folder_name(index, stage.name)] = hashes
        folder.update_job(artifacts=recorded)
    folder.write_marker(step.name, None, {"rows": rows, "seconds": round(time.perf_counter() - started, 6),
                                          "table_rows": table.num_rows if table is not None else None,
                                          "artifacts": hashes} | ({"buckets": bucket_facts} if bucket_facts else {}))
