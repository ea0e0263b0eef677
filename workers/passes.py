"""Ray execution: connect to a cluster, run a pass over work units (Ray Data tasks, or an
actor pool for a model stage), run the output writes. Failures come back as error
records (code, stage, shard, unit, row), never as text to parse.

Each pass is one Ray Data ``map_batches`` over unit records, so a unit's outputs and
markers stay one-to-one and every write is atomic; Ray Data's own ``write_parquet``
names files itself and cannot give that.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from workers.job_folder import JobFolder
from workers.planner import Pass, Step
from workers.shards import Shard, Unit
from workers.spec import JobSpec
from workers.unit_steps import RunContext, UnitRunner, error_record

log = logging.getLogger("curate")


class ResourceError(RuntimeError):
    """The cluster can never meet a stage's request (Ray would wait forever)."""

    code = "resources_unavailable"


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


def run_tasks(fn, calls: list[tuple], memory_mb: int) -> list:
    """``fn(*args)`` for each of ``calls`` as Ray tasks of one CPU and ``memory_mb`` each
    (a bucketed fit's tasks, ``workers/bucketed_fit.py``); results in order."""
    import ray

    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if memory_mb * 2**20 > largest:  # Ray would wait forever for a node that big
        raise ResourceError(f"execution.fit_task_memory_mb = {memory_mb} is more than any node of the cluster can "
                            f"give a task ({largest / 2**20:,.0f} MiB); lower it")
    remote = ray.remote(fn).options(num_cpus=1, memory=memory_mb * 2**20)
    return ray.get([remote.remote(*args) for args in calls])


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# One UnitRunner per worker process and job: Ray reuses worker processes across tasks,
# so stages (and any model they load) are built once per process, not per unit.
_RUNNERS: dict[tuple[str, str], UnitRunner] = {}


def _runner_for(spec_json: str, job_id: str) -> UnitRunner:
    from workers.job import build_stages

    key = (spec_json, job_id)
    if key not in _RUNNERS:
        _RUNNERS.clear()  # keep only the current job's stages in memory
        spec = JobSpec.model_validate_json(spec_json)
        _RUNNERS[key] = UnitRunner(RunContext(job_id, JobFolder(spec.output), spec.columns.text, spec.columns.id,
                                              build_stages(spec)))
    return _RUNNERS[key]


def unit_record(unit: Unit) -> dict:
    return {"index": unit.index, "start": unit.start, "stop": unit.stop, **{f"shard_{k}": v for k, v in
                                                                            asdict(unit.shard).items()}}


def _unit_of(row: dict) -> Unit:
    shard = Shard(index=int(row["shard_index"]), path=str(row["shard_path"]), rows=int(row["shard_rows"]),
                  has_id=bool(row["shard_has_id"]))
    return Unit(int(row["index"]), shard, int(row["start"]), int(row["stop"]))


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(batch[k] for k in keys), strict=True)]


def _result(keys: list[str], errors: list[dict | None]) -> dict:
    return {"key": keys, "error": [json.dumps(e, default=str) if e else "" for e in errors]}


def _run_units(batch: dict, spec_json: str, job_id: str, steps: list[dict], write: bool) -> dict:
    """Ray Data task: run the pass's steps on each unit of the batch (one, in practice);
    with ``write``, each unit is a whole shard and its output is written at once too."""
    runner = _runner_for(spec_json, job_id)
    todo = [Step(**s) for s in steps]
    units = [_unit_of(r) for r in _rows(batch)]
    return _result([u.key for u in units], [runner.run(u, todo, write=write) for u in units])


class _UnitActor:
    """Ray Data actor for a pass with a model stage: the model loads once, on the actor's
    first batch, then serves every unit the actor gets. Loading there rather than in
    ``__init__`` lets a model that fails to load fail the job with the stage named, like
    any step error, instead of as a crashed actor."""

    def __init__(self) -> None:
        self.loaded = False

    def __call__(self, batch: dict, spec_json: str, job_id: str, steps: list[dict], write: bool,
                 model_stage: int) -> dict:
        if not self.loaded:
            runner = _runner_for(spec_json, job_id)
            stage = runner.ctx.stages[model_stage]
            try:
                stage.load()
            except Exception as exc:  # noqa: BLE001 - reported per unit, like any step error
                units = [_unit_of(r) for r in _rows(batch)]
                error = {**error_record(exc, stage=stage.name, shard=None, unit=None), "code": "model_load_failed",
                         "message": f"{stage.name}: cannot load its model: {type(exc).__name__}: {exc}"}
                return _result([u.key for u in units], [error] * len(units))
            self.loaded = True
        return _run_units(batch, spec_json, job_id, steps, write)


def _write_shards(batch: dict, spec_json: str, job_id: str, units: list[dict]) -> dict:
    runner = _runner_for(spec_json, job_id)
    all_units = [_unit_of(u) for u in units]
    keys, errors = [], []
    for row in _rows(batch):
        shard = Shard(index=int(row["index"]), path=str(row["path"]), rows=int(row["rows"]),
                      has_id=bool(row["has_id"]))
        keys.append(shard.key)
        errors.append(runner.write_shard(shard, [u for u in all_units if u.shard.index == shard.index]))
    return _result(keys, errors)


def actor_count(params, stage: str) -> int:
    """Actors for a model stage; refuses requests the cluster can never meet."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), resources.get("GPU", 0)
    if params.cpus_per_actor > cpus:
        raise ResourceError(f"{stage}: cpus_per_actor={params.cpus_per_actor} but the Ray cluster has {cpus} CPUs")
    if params.num_gpus > gpus:
        raise ResourceError(f"{stage}: num_gpus={params.num_gpus} per actor but the Ray cluster has {gpus:g} GPUs")
    return params.num_actors or max(1, cpus // params.cpus_per_actor)


def _bar_labels(steps: tuple[Step, ...]) -> list[str]:
    """One progress bar per stage of the pass, e.g. ``<stage> (select)``."""
    phases: dict[str, list[str]] = {}
    for st in steps:
        phases.setdefault(st.stage, []).append(st.method)
    return [name if kinds in (["score", "select"], ["transform"]) else f"{name} ({'+'.join(kinds)})"
            for name, kinds in phases.items()]


def _collect(ds, total: int, labels: list[str], label: str, progress: bool) -> list[dict]:
    errors = []
    # A unit finishes every step of the pass in one task, so the bars advance together;
    # each still names its stage, so a user sees where the job is.
    bars = [tqdm(total=total, desc=f"{label} {name}", unit="unit", disable=not progress, position=i, leave=True)
            for i, name in enumerate(labels)]
    try:
        for row in ds.iter_rows():
            if row["error"]:
                errors.append(json.loads(row["error"]))
            for bar in bars:
                bar.update(1)
    finally:
        for bar in bars:
            bar.close()
    return errors


def _quiet_ray_data():
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray.data


def run_pass(spec: JobSpec, job_id: str, units: list[Unit], plan: Pass, stages: list, *, workers: int,
             label: str, progress: bool, write: bool = False) -> list[dict]:
    """Run the pass's steps on every unit; returns the error records of failed units.
    ``write``: every unit is a whole shard, so write its output in the same task (saves
    a pass)."""
    data = _quiet_ray_data()
    fn_kwargs = {"spec_json": spec.model_dump_json(), "job_id": job_id, "steps": [asdict(s) for s in plan.steps],
                 "write": write}
    ds = data.from_items([unit_record(u) for u in units], override_num_blocks=len(units))
    if plan.model_stage is not None:
        # One actor per model replica, each holding the model for the whole pass.
        stage = stages[plan.model_stage]
        size = actor_count(stage.params, stage.name)
        ds = ds.map_batches(
            _UnitActor, fn_kwargs={**fn_kwargs, "model_stage": plan.model_stage}, batch_size=1,
            compute=data.ActorPoolStrategy(size=max(1, min(size, len(units)))),
            num_cpus=stage.params.cpus_per_actor, num_gpus=stage.params.num_gpus or None,
        )
    else:
        # Tasks, not an actor pool: a new actor pool per pass costs seconds of process
        # start-up, while pooled task workers are warm after the first pass (measured:
        # ~3.5 s vs ~0.15 s per pass on 2 cores).
        ds = ds.map_batches(_run_units, fn_kwargs=fn_kwargs, batch_size=1,
                            compute=data.TaskPoolStrategy(size=max(1, min(workers, len(units)))), num_cpus=1)
    labels = _bar_labels(plan.steps) + (["write outputs"] if write else [])
    return _collect(ds, len(units), labels, label, progress)


def run_writes(spec: JobSpec, job_id: str, shards: list[Shard], units: list[Unit], *, workers: int,
               progress: bool) -> list[dict]:
    """Assemble one output file per input shard (after every unit passed every stage)."""
    data = _quiet_ray_data()
    fn_kwargs = {"spec_json": spec.model_dump_json(), "job_id": job_id,
                 "units": [unit_record(u) for u in units if u.shard in shards]}
    ds = data.from_items([asdict(s) for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(_write_shards, fn_kwargs=fn_kwargs, batch_size=1,
                        compute=data.TaskPoolStrategy(size=max(1, min(workers, len(shards)))), num_cpus=1)
    return _collect(ds, len(shards), ["write outputs"], "[write]", progress)
