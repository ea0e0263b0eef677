"""Run stages on an Arrow table in this process, without Ray: the same planner, steps,
fits and lineage as a job on a cluster, so what a test or notebook sees is what a job
records. For tests, notebooks and users::

    from workers.local import run_stages
    run = run_stages([ExactDedupV1(), QualityRulesV1({"min_words": 20})], table)
    run.output                       # the surviving documents (every input column kept)
    run.decisions("exact_dedup_v1")  # lineage rows: decision, reason, scores, cluster, parent
    run.funnel                       # docs in / kept / dropped / created per stage
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from filters.base import Stage
from filters.registry import BUILTIN_FIRST_STAGE, get_stage
from workers.bucketed_fit import DEFAULT_TASK_MEMORY_MB
from workers.fits import run_fit
from workers.job import JobError
from workers.job_folder import JobFolder
from workers.planner import plan_passes, step_names
from workers.shards import Shard, plan_units
from workers.unit_steps import RunContext, UnitRunner


@dataclass(frozen=True)
class LocalRun:
    output: pa.Table
    lineage: pa.Table
    funnel: list[dict]
    scores: dict[str, pa.Table]  # stage name -> its scores (last scoring phase), every unit
    fits: dict[str, pa.Table | None]  # stage name -> what its (last) fit returned

    def decisions(self, stage: str) -> list[dict]:
        """One stage's lineage rows in document order, scores as a dict."""
        rows = [r for r in self.lineage.to_pylist() if r["stage"] == stage]
        return [{**r, "scores": dict(r["scores"] or [])} for r in rows]

    def by_id(self, stage: str) -> dict[str, dict]:
        return {r["doc_id"]: r for r in self.decisions(stage)}


StageLike = Stage | str | tuple[str, dict]


def _stage(item: StageLike) -> Stage:
    if isinstance(item, Stage):
        return item
    name, params = (item, {}) if isinstance(item, str) else item
    return get_stage(name)(params)


def run_stages(stages: list[StageLike], docs: pa.Table, *, unit_rows: int | None = None, text_column: str = "text",
               id_column: str = "id", workdir: str | Path | None = None, job_id: str = "local",
               fit_buckets: int = 1, fit_task_memory_mb: int = DEFAULT_TASK_MEMORY_MB) -> LocalRun:
    """Apply ``stages`` (instances, names or ``(name, params)``) in order to ``docs`` (a text
    column and, optionally, an id column; ids are ``docs:<row>`` when absent). The
    built-in input check runs first, as in every job. ``unit_rows`` splits the table
    into work units as a job would; ``workdir`` keeps the job folder there (``<workdir>/job``);
    ``job_id`` names the job in lineage and job.json (e.g. for ``curate index add``);
    ``fit_buckets`` > 1 runs a bucketed fit's tasks (``workers/bucketed_fit.py``) one after
    another in this process."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="curate-local-"))
    try:
        return _run([get_stage(BUILTIN_FIRST_STAGE)()] + [_stage(s) for s in stages], docs, root, unit_rows,
                    text_column, id_column, job_id, fit_buckets, fit_task_memory_mb)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def run_stage(stage: StageLike, docs: pa.Table, **kwargs) -> LocalRun:
    return run_stages([stage], docs, **kwargs)


def _run(stages: list[Stage], docs: pa.Table, root: Path, unit_rows: int | None, text_column: str,
         id_column: str, job_id: str, fit_buckets: int, fit_task_memory_mb: int) -> LocalRun:
    for stage in stages:  # as a job does: before any document is read
        stage.preflight()
    source = root / "input" / "docs.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(docs, source)
    shard = Shard(index=0, path=str(source), rows=docs.num_rows, has_id=id_column in docs.column_names)
    units = plan_units([shard], unit_rows or max(1, docs.num_rows), 1)
    folder = JobFolder(root / "job")
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.update_job(job_id=job_id, name=job_id, steps=step_names(stages), units=[u.record() for u in units],
                      fit_buckets=fit_buckets,
                      stages=[{"index": i, "name": s.name, "kind": s.kind,
                               "params": s.params.model_dump(mode="json")} for i, s in enumerate(stages)])
    runner = UnitRunner(RunContext(job_id, folder, text_column, id_column, stages))
    for plan in plan_passes(stages):
        for unit in units:
            error = runner.run(unit, list(plan.steps))
            if error:
                raise JobError.from_record(error)
        if plan.fit_after is not None:
            run_fit(folder, units, plan.fit_after, stages, task_memory_mb=fit_task_memory_mb)
    error = runner.write_shard(shard, units)
    if error:
        raise JobError.from_record(error)
    lineage = pa.concat_tables([pq.read_table(folder.decisions(i, s.name, u.key))
                                for i, s in enumerate(stages) for u in units], promote_options="permissive")
    scores, fits = {}, {}
    for i, s in enumerate(stages):
        phase = next((p.method for p in reversed(s.phases) if p.kind == "score"), "score")
        paths = [folder.scores(i, s.name, u.key, phase) for u in units]
        # A unit no document reached may have stored untyped (empty) columns: promote.
        scores[s.name] = pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive") \
            if all(p.exists() for p in paths) else None
        fit = next((p.method for p in reversed(s.phases) if p.kind == "fit"), None)
        fits[s.name] = pq.read_table(folder.fit(i, s.name, fit)) if fit and folder.fit(i, s.name, fit).exists() \
            else None
    return LocalRun(output=pq.read_table(folder.output(shard.key)), lineage=lineage, funnel=folder.funnel(),
                    scores=scores, fits=fits)
