"""The job driver: pre-flight, then segments of per-shard steps on Ray Data with a
corpus-wide ``fit`` between them, then the manifest.

Steps are grouped so a job needs one Ray Data pass per corpus-wide stage plus one:
per-document stages (score+select) chain inside a pass; a corpus-wide stage's
score ends a pass, its fit runs in the driver over the stored scores, and its select
opens the next pass. Each pass maps over *shards* (one row per shard), so a shard's
outputs and completion markers stay one-to-one and every write is atomic; Ray Data's
own ``write_parquet`` names files itself and cannot give that.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from filters.base import ID, ORDER, ORDER_SHARD_SHIFT
from workers import atomic
from workers.layout import JobLayout
from workers.runner import ShardRunner, Step, build_stages
from workers.shards import ROW, Shard, preflight
from workers.spec import JobSpec

log = logging.getLogger("curate")


class JobError(RuntimeError):
    """A job that could not finish; the message names the shard and the cause."""


@dataclass(frozen=True)
class Segment:
    steps: list[Step]
    fit_after: Step | None  # the corpus-wide stage whose fit runs once this segment is done


def plan_segments(stage_names: list[str], corpus_wide: list[bool]) -> list[Segment]:
    segments, steps = [], []
    for i, (name, is_global) in enumerate(zip(stage_names, corpus_wide, strict=True)):
        steps.append(Step("score", i, name))
        if is_global:
            segments.append(Segment(steps, Step("fit", i, name)))  # type: ignore[arg-type]
            steps = []
        steps.append(Step("select", i, name))
    steps.append(Step("write"))
    segments.append(Segment(steps, None))
    return segments


def code_version() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=here,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"curate=={version('curate')}"
        except PackageNotFoundError:
            return "unknown"


def connect_ray() -> None:
    """Join ``RAY_ADDRESS`` when set, otherwise start a local cluster bound to loopback."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        # `ray start` enables token auth and stores the token there; drivers must opt in too.
        os.environ["RAY_AUTH_MODE"] = "token"
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)


# One ShardRunner per worker process and job: Ray reuses worker processes across
# tasks, so stages (and any model they load) are built once per process, not per shard.
_RUNNERS: dict[tuple[str, str], ShardRunner] = {}


def _runner_for(spec_json: str, job_id: str) -> ShardRunner:
    key = (spec_json, job_id)
    if key not in _RUNNERS:
        _RUNNERS.clear()  # keep only the current job's stages in memory
        _RUNNERS[key] = ShardRunner(JobSpec.model_validate_json(spec_json), job_id)
    return _RUNNERS[key]


def _run_shards(batch: dict, spec_json: str, job_id: str, steps: list[dict]) -> dict:
    """Ray Data task: run the pass's steps on each shard of the batch (one, in practice)."""
    runner = _runner_for(spec_json, job_id)
    todo = [Step(**s) for s in steps]
    results = [runner.run(Shard(**_shard_fields(row)), todo) for row in _rows(batch)]
    return {"shard": [r["shard"] for r in results], "error": [r["error"] or "" for r in results]}


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(batch[k] for k in keys), strict=True)]


def _shard_fields(row: dict) -> dict:
    return {"index": int(row["index"]), "path": str(row["path"]), "rows": int(row["rows"]),
            "has_id": bool(row["has_id"])}


def _bar_labels(steps: list[Step]) -> list[str]:
    """One progress bar per stage of the pass, e.g. ``exact_dedup_v1 (select)``."""
    phases: dict[str, list[str]] = {}
    for st in steps:
        phases.setdefault(st.stage or "write outputs", []).append(st.kind)
    return [name if name == "write outputs" or kinds == ["score", "select"] else f"{name} ({'+'.join(kinds)})"
            for name, kinds in phases.items()]


class _ShardActor:
    """Ray Data actor for passes that score with a model: the model loads once, on the
    actor's first batch, and then serves every shard the actor is given. Loading there
    rather than in ``__init__`` lets a model that fails to load fail the job with the
    stage named, like any shard error, instead of as a crashed actor."""

    def __init__(self) -> None:
        self.loaded = False

    def __call__(self, batch: dict, spec_json: str, job_id: str, steps: list[dict]) -> dict:
        if not self.loaded:
            runner = _runner_for(spec_json, job_id)
            try:
                for st in steps:
                    if st["kind"] == "score":
                        runner.stages[st["stage_index"]].load()
            except Exception as exc:  # noqa: BLE001 - reported per shard, like any stage error
                error = f"{st['stage']}: cannot load its model: {type(exc).__name__}: {exc}"
                return {"shard": [str(p) for p in batch["path"]], "error": [error] * len(batch["path"])}
            self.loaded = True
        return _run_shards(batch, spec_json, job_id, steps)


def _actor_count(params, stage: str) -> int:
    """Actors for a model stage; refuses requests the cluster can never meet (Ray would wait forever)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), resources.get("GPU", 0)
    if params.cpus_per_actor > cpus:
        raise JobError(f"{stage}: cpus_per_actor={params.cpus_per_actor} but the Ray cluster has {cpus} CPUs")
    if params.num_gpus > gpus:
        raise JobError(f"{stage}: num_gpus={params.num_gpus} per actor but the Ray cluster has {gpus:g} GPUs")
    return params.num_actors or max(1, cpus // params.cpus_per_actor)


def _model_scoring(stages, steps: list[Step]) -> list[int]:
    """Indices of stages that load a model and score in this pass."""
    return [st.stage_index for st in steps if st.kind == "score" and stages[st.stage_index].uses_model]


def run_pass(spec: JobSpec, job_id: str, shards: list[Shard], steps: list[Step], stages: list, *, workers: int,
             label: str, progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    fn_kwargs = {"spec_json": spec.model_dump_json(), "job_id": job_id, "steps": [asdict(s) for s in steps]}
    ds = ray.data.from_items([asdict(s) for s in shards], override_num_blocks=len(shards))
    model_stages = _model_scoring(stages, steps)
    if model_stages:
        # One actor per model replica, each holding the model for the whole pass.
        params = stages[model_stages[0]].params
        size = _actor_count(params, stages[model_stages[0]].name)
        ds = ds.map_batches(
            _ShardActor, fn_kwargs=fn_kwargs, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(size, len(shards)))),
            num_cpus=params.cpus_per_actor, num_gpus=params.num_gpus or None,
        )
    else:
        # Tasks, not an actor pool: a new actor pool per pass costs seconds of process
        # start-up, while pooled task workers are warm after the first pass (measured:
        # ~3.5 s vs ~0.15 s per pass on 2 cores).
        ds = ds.map_batches(
            _run_shards, fn_kwargs=fn_kwargs, batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(shards)))), num_cpus=1,
        )
    errors = []
    # A shard finishes every step of the pass in one task, so the bars advance together;
    # each still names its stage, so a user sees where the job is.
    bars = [tqdm(total=len(shards), desc=f"{label} {name}", unit="shard", disable=not progress, position=i,
                 leave=True) for i, name in enumerate(_bar_labels(steps))]
    try:
        for row in ds.iter_rows():
            if row["error"]:
                errors.append(row["error"])
            for bar in bars:
                bar.update(1)
    finally:
        for bar in bars:
            bar.close()
    if errors:
        raise JobError(errors[0] if len(errors) == 1 else f"{len(errors)} shards failed; first:\n{errors[0]}")


# Corpus-wide fits that read the stage's score files themselves (out of core, e.g. with
# DuckDB) instead of receiving every score in one in-memory table.
FILE_FITS = {"minhash_dedup_v1": "workers.minhash_fit:fit_minhash"}


def run_fit(layout: JobLayout, shards: list[Shard], step: Step, stage, stage_names: list[str]) -> None:
    marker = layout.marker(step.name)
    if marker.exists():
        return
    started = time.perf_counter()
    if step.stage in FILE_FITS:  # out of core: the fit reads the score files itself
        module, _, name = FILE_FITS[step.stage].partition(":")
        fit = getattr(importlib.import_module(module), name)
        fitted = fit(layout, shards, step.stage_index, stage, stage_names)
        rows = sum(s.rows for s in shards)
    else:
        parts = []
        for shard in shards:
            t = pq.read_table(layout.scores(step.stage_index, step.stage, shard.key))
            order = pc.add(pa.scalar(shard.index << ORDER_SHARD_SHIFT, pa.int64()), t[ROW])
            parts.append(t.append_column(ORDER, order))
        scores = pa.concat_tables(parts)
        fitted = stage.fit(scores.select([ID, ORDER] + [c for c in scores.column_names if c not in (ID, ORDER, ROW)]))
        rows = scores.num_rows
    atomic.write_parquet(fitted, layout.fit(step.stage_index, step.stage))
    atomic.write_json({"rows": rows, "seconds": round(time.perf_counter() - started, 6)}, marker)


def _prepare_folder(spec: JobSpec, layout: JobLayout, overwrite: bool) -> None:
    if layout.job_file.exists():
        previous = atomic.read_json(layout.job_file)
        if previous.get("spec_hash") != spec.spec_hash():
            if not overwrite:
                raise JobError(
                    f"{layout.root} holds job {previous.get('job_id')} with another spec; "
                    "use a new output folder or --overwrite to replace it"
                )
            shutil.rmtree(layout.root)
    elif layout.root.exists() and any(layout.root.iterdir()):
        if not overwrite:
            raise JobError(f"{layout.root} exists and is not a curate job folder; refusing to write into it")
        shutil.rmtree(layout.root)
    layout.root.mkdir(parents=True, exist_ok=True)
    removed = atomic.remove_stale_temporaries(layout.root)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)


def run_job(spec: JobSpec, *, progress: bool = True, overwrite: bool = False) -> dict:
    """Run (or resume) a job; returns the manifest."""
    layout = JobLayout(spec.output)
    _prepare_folder(spec, layout, overwrite)
    if layout.manifest.exists():
        return atomic.read_json(layout.manifest)
    job_id = spec.job_id()
    shards = preflight(spec)
    stages = build_stages(spec)
    model_hashes = {f: atomic.sha256_file(Path(f)) for s in stages for f in s.model_files()}
    if not layout.job_file.exists():
        atomic.write_json({
            "job_id": job_id, "name": spec.name, "spec_hash": spec.spec_hash(), "spec": spec.model_dump(mode="json"),
            "code_version": code_version(), "model_hashes": model_hashes,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": [s.name for s in stages],
            "inputs": [asdict(s) | {"key": s.key} for s in shards],
        }, layout.job_file)
    connect_ray()
    import ray

    workers = spec.execution.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    segments = plan_segments([s.name for s in stages], [s.corpus_wide for s in stages])
    for n, segment in enumerate(segments, 1):
        pending = [s for s in shards if any(not layout.marker(st.name, s.key).exists() for st in segment.steps)]
        if pending:
            run_pass(spec, job_id, pending, segment.steps, stages, workers=workers,
                     label=f"[pass {n}/{len(segments)}]", progress=progress)
        if segment.fit_after is not None:
            run_fit(layout, shards, segment.fit_after, stages[segment.fit_after.stage_index],
                    [s.name for s in stages])
    manifest = build_manifest(spec, layout, shards, stages, job_id, model_hashes)
    atomic.write_json(manifest, layout.manifest)
    return manifest


def funnel(layout: JobLayout, shards: list[Shard], stage_names: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(stage_names):
        totals = {"stage_index": i, "stage": name, "docs_in": 0, "kept": 0, "dropped": 0, "reasons": {},
                  "text_bytes_in": 0, "text_bytes_kept": 0}
        for shard in shards:
            stats = atomic.read_json(layout.stats(i, name, shard.key))
            for key in ("docs_in", "kept", "dropped", "text_bytes_in", "text_bytes_kept"):
                totals[key] += stats[key]
            for reason, count in stats["reasons"].items():
                totals["reasons"][reason] = totals["reasons"].get(reason, 0) + count
        totals["reasons"] = dict(sorted(totals["reasons"].items(), key=lambda kv: -kv[1]))
        rows.append(totals)
    return rows


def build_manifest(spec: JobSpec, layout: JobLayout, shards: list[Shard], stages, job_id: str,
                   model_hashes: dict) -> dict:
    files = []
    for shard in shards:
        facts = atomic.read_json(layout.marker("write", shard.key))
        files.append({"path": str(layout.output(shard.key).relative_to(layout.root)), "source": shard.path,
                      "rows": facts["rows"], "bytes": facts["bytes"], "sha256": facts["sha256"]})
    stage_funnel = funnel(layout, shards, [s.name for s in stages])
    kept_text = stage_funnel[-1]["text_bytes_kept"]
    return {
        "job_id": job_id, "name": spec.name, "spec_hash": spec.spec_hash(), "code_version": code_version(),
        "model_hashes": model_hashes, "columns": spec.columns.model_dump(),
        "input": {"shards": len(shards), "rows": sum(s.rows for s in shards)},
        "output": {"rows": sum(f["rows"] for f in files), "bytes": sum(f["bytes"] for f in files),
                   "text_bytes": kept_text,
                   # ~4 UTF-8 bytes per token for English BPE vocabularies; a planning estimate only.
                   "est_tokens": kept_text // 4},
        "files": files,
        "funnel": stage_funnel,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
