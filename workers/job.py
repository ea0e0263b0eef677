"""Runs (or resumes) a job: prepare the folder, pre-flight the inputs, plan work units and
passes, run the passes on Ray with the fits between them, write the outputs and the
manifest. A failure is recorded in ``error.json`` (code, message, stage, shard, row)
before it is raised, so whoever launched the job reads it as data.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from filters.base import DETAIL, PARENT_ID, Stage
from filters.registry import BUILTIN_FIRST_STAGE, get_stage
from workers import atomic
from workers.bucketed_fit import bucket_count
from workers.fits import run_fit
from workers.job_folder import WRITE_STEP, FolderInUse, JobFolder
from workers.manifest import build_manifest, code_version
from workers.planner import plan_passes, stage_steps, step_names
from workers.shards import InputError, Shard, Unit, open_parquet, plan_units, preflight, units_from_record
from workers.spec import JobSpec

log = logging.getLogger("curate")


class JobError(RuntimeError):
    """A job that could not finish, carried as data: ``code``, the message, and where
    (stage, shard, unit, row) when known. ``str()`` is the message."""

    def __init__(self, message: str, code: str = "internal_error", **where) -> None:
        super().__init__(message)
        self.code, self.where = code, {k: v for k, v in where.items() if v is not None}

    @classmethod
    def from_record(cls, record: dict) -> JobError:
        where = {k: record.get(k) for k in ("stage", "shard", "unit", "row")}
        return cls(record["message"], record["code"], **where)


def build_stages(spec: JobSpec) -> list[Stage]:
    """The built-in input check, then the spec's stages in order."""
    stages: list[Stage] = [get_stage(BUILTIN_FIRST_STAGE)()]
    stages += [get_stage(s.stage)(s.params) for s in spec.stages]
    return stages


def _prepare_folder(spec: JobSpec, folder: JobFolder, overwrite: bool) -> None:
    if folder.started():
        previous = folder.job()
        if previous.get("spec_hash") != spec.spec_hash():
            if not overwrite:
                raise JobError(f"{folder.root} holds job {previous.get('job_id')} with another spec; "
                               "use a new output folder or --overwrite to replace it", "output_conflict")
            folder.reset()
    elif folder.root.exists() and any(folder.root.iterdir()):
        if not overwrite:
            raise JobError(f"{folder.root} exists and is not a curate job folder; refusing to write into it",
                           "output_conflict")
        folder.reset()
    folder.root.mkdir(parents=True, exist_ok=True)
    removed = atomic.remove_stale_temporaries(folder.root)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)


def stage_records(spec: JobSpec, stages: list[Stage]) -> list[dict]:
    params = [{}] + [s.params for s in spec.stages]
    return [{"index": i, "name": s.name, "kind": s.kind, "params": p} for i, (s, p) in
            enumerate(zip(stages, params, strict=True))]


def _check_inputs(spec: JobSpec, stages: list[Stage], shards: list[Shard], recorded: list[dict] | None) -> None:
    if recorded is not None:
        now = [(s.path, s.rows) for s in shards]
        before = [(r["path"], r["rows"]) for r in recorded]
        if now != before:
            raise InputError(f"the inputs changed since this job started ({len(before)} shards then, {len(now)} "
                             "now, or different rows); run into a new output folder")
    if any(s.creates_documents for s in stages):
        for shard in shards:
            names = open_parquet(shard.path).schema_arrow.names
            for column in (PARENT_ID, DETAIL):
                if column in names:
                    raise InputError(f"{shard.path}: has a column {column!r}, which this job's outputs add for "
                                     "created documents; rename it", path=shard.path)


def _units(spec: JobSpec, folder: JobFolder, shards: list[Shard], workers: int, stages: list[Stage]) -> list[Unit]:
    job = folder.job()
    if "units" in job:  # resume: the plan the job started with, whatever unit_rows says now
        return units_from_record(shards, job["units"])
    units = plan_units(shards, spec.execution.unit_rows, workers)
    # Like the units, the bucket count is fixed here: the scoring pass writes keys by bucket.
    ex = spec.execution
    buckets = ex.fit_buckets or bucket_count(sum(s.rows for s in shards), stages, ex.fit_task_memory_mb)
    folder.update_job(inputs=[asdict(s) | {"key": s.key} for s in shards], units=[u.record() for u in units],
                      fit_buckets=buckets)
    return units


def _model_hashes(stages: list[Stage]) -> dict[str, str]:
    hashes = {}
    for stage in stages:
        try:
            hashes.update({f: atomic.sha256_file(Path(f)) for f in stage.model_files()})
        except (OSError, ImportError) as exc:
            raise JobError(f"{stage.name}: cannot read its model: {exc}", "model_load_failed",
                           stage=stage.name) from exc
    return hashes


def run_job(spec: JobSpec, *, progress: bool = True, overwrite: bool = False) -> dict:
    """Run (or resume) a job; returns the manifest. Raises InputError / JobError after
    recording them in the folder's error.json."""
    folder = JobFolder(spec.output)
    try:
        with folder.run_lock():
            return _locked_run(spec, folder, progress, overwrite)
    except FolderInUse as exc:  # not recorded in error.json: the folder is the other run's
        raise JobError(str(exc), "output_conflict") from None


def _locked_run(spec: JobSpec, folder: JobFolder, progress: bool, overwrite: bool) -> dict:
    _prepare_folder(spec, folder, overwrite)
    if folder.complete():
        return atomic.read_json(folder.manifest)
    try:
        manifest = _run(spec, folder, progress)
    except InputError as exc:
        folder.write_error(exc.code, str(exc), shard=exc.path, row=exc.row)
        raise
    except JobError as exc:
        folder.write_error(exc.code, str(exc), **exc.where)
        raise
    except Exception as exc:
        folder.write_error("internal_error", f"{type(exc).__name__}: {exc}")
        raise
    folder.clear_error()
    return manifest


def _run(spec: JobSpec, folder: JobFolder, progress: bool) -> dict:
    from workers.passes import ResourceError, cluster_cpus, connect_ray, run_pass, run_tasks, run_writes

    job_id = spec.job_id()
    stages = build_stages(spec)
    if not folder.started():
        folder.update_job(job_id=job_id, name=spec.name, spec_hash=spec.spec_hash(),
                          spec=spec.model_dump(mode="json"), code_version=code_version(),
                          created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                          stages=stage_records(spec, stages), steps=step_names(stages))
    shards = preflight(spec)
    _check_inputs(spec, stages, shards, folder.job().get("inputs"))
    for i, stage in enumerate(stages):  # e.g. an index to deduplicate against: refused now, not after scoring
        fits = [st for st in stage_steps(i, stage) if st.kind == "fit"]
        if fits and all(folder.done(st.name) for st in fits):
            continue  # a resume after the fits: what they read is no longer needed
        try:
            stage.preflight()
        except ValueError as exc:
            raise JobError(f"{stage.name}: {exc}", "invalid_spec", stage=stage.name) from None
    if "model_hashes" not in folder.job():
        folder.update_job(model_hashes=_model_hashes(stages))
    connect_ray()
    workers = spec.execution.num_workers or cluster_cpus()
    units = _units(spec, folder, shards, cluster_cpus(), stages)
    passes = plan_passes(stages)
    # One unit per shard: the last pass writes each output in the same task.
    write_in_last = all(sum(u.shard.index == s.index for u in units) == 1 for s in shards)
    for n, plan in enumerate(passes, 1):
        last = n == len(passes)
        pending = [u for u in units if any(not folder.done(st.name, u.key) for st in plan.steps)
                   or (last and write_in_last and not folder.done(WRITE_STEP, u.shard.key))]
        if pending:
            try:
                errors = run_pass(spec, job_id, pending, plan, stages, workers=workers, progress=progress,
                                  label=f"[pass {n}/{len(passes)}]", write=last and write_in_last)
            except ResourceError as exc:
                raise JobError(str(exc), exc.code) from None
            _raise_first(errors)
        if plan.fit_after is not None:
            try:
                run_fit(folder, units, plan.fit_after, stages, map_tasks=run_tasks,
                        task_memory_mb=spec.execution.fit_task_memory_mb)
            except Exception as exc:  # noqa: BLE001 - carried as data with the stage named
                raise JobError(f"{plan.fit_after.stage} (corpus-wide {plan.fit_after.method}): "
                               f"{type(exc).__name__}: {exc}", "stage_failed", stage=plan.fit_after.stage) from exc
    unwritten = [s for s in shards if not folder.done(WRITE_STEP, s.key)]
    if unwritten:
        _raise_first(run_writes(spec, job_id, unwritten, units, workers=workers, progress=progress))
    manifest = build_manifest(spec, folder, shards, job_id)
    atomic.write_json(manifest, folder.manifest)
    return manifest


def _raise_first(errors: list[dict]) -> None:
    if not errors:
        return
    first = errors[0]
    if len(errors) > 1:
        first = {**first, "message": f"{len(errors)} units failed; first: {first['message']}"}
    if first.get("traceback"):
        log.error("%s", first["traceback"])
    raise JobError.from_record(first)
