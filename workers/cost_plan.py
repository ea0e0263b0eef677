"""``curate plan``: what a job would cost, measured before anything is launched.

The job's own stages run on two nested samples of the input (``sample`` documents and
half of them, spread evenly over every shard; after a warm-up run on the sample, which is
not counted) through the in-process runner: the same
steps, fits and lineage files as a job. For every step, its seconds on the two samples
give a line ``seconds = fixed + per_doc × documents`` (a model load or a fit's set-up is
the fixed part). The sample's funnel says what share of the input reaches each stage.
Extrapolated to the input's rows:

* CPU time per stage: per-unit steps ``per_doc × documents + fixed × units`` (every work
  unit of the job pays the fixed part: e.g. a model stage's actors load once each; that
  is counted per unit, an upper bound), fits ``fixed + per_doc × documents``;
* wall time for ``cpus`` CPUs: per-unit work spread over ``min(cpus, units)`` workers,
  fits one after another on one node (as the driver runs them today);
* disk: bytes per document of the sample's score, lineage and output files;
* a fit's result held in memory: its table's in-memory bytes per document × documents,
  flagged when it passes half the node's memory;
* a bucketed fit (MinHash, exact dedup, concept clusters): the bucket count the job would choose from
  ``execution.fit_task_memory_mb`` (``workers/bucketed_fit.py``), its tasks' time spread
  over the cluster's CPUs, and a flag when a single-node fit's keys would not fit a node.

What it cannot see: costs that grow faster than linearly (a fit's candidate pairs on a
corpus with huge duplicate clusters), a GPU (stages are measured on CPU here), and a
cluster's network. Checked against real runs in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.bucketed_fit import bucket_count, doc_key_bytes
from workers.job import JobError, build_stages
from workers.job_folder import JobFolder
from workers.local import run_stages
from workers.planner import stage_steps
from workers.shards import MAX_UNIT_ROWS, MIN_UNIT_ROWS, discover, open_parquet
from workers.spec import JobSpec

CHARS_PER_TOKEN = 4  # the estimate the manifest and the dashboard use


class PlanError(ValueError):
    """The job cannot be measured on a sample (a stage failed on it): the message says
    which stage and why. ``too_small``: the whole sample ran and only its half failed, so
    the failure comes from the sample's size (a larger one is tried)."""

    def __init__(self, message: str, reason: str = "", too_small: bool = False) -> None:
        super().__init__(message)
        self.reason, self.too_small = reason or message, too_small


# Times a sample whose half failed is doubled before the plan gives up (400 → 1,600 by
# default): a late stage's fit may need more documents than reach it from a small sample.
RESAMPLES = 2


@dataclass
class StageCost:
    index: int
    stage: str
    kind: str
    docs_in: int
    docs_out: int
    tokens_in: int
    cpu_hours: float
    wall_hours: float
    fit_seconds: float
    fit_memory_bytes: int
    disk_bytes: int  # its scores and lineage
    fit_buckets: int | None = None  # a bucketed fit's tasks (None: the stage has no bucketed fit)
    note: str | None = None


def _sample(spec: JobSpec, n: int) -> tuple[pa.Table, int, int]:
    """(``n`` documents spread evenly over the input, the input's rows, its bytes on disk)."""
    paths = discover(spec.inputs)
    files = [open_parquet(p) for p in paths]
    rows = [f.metadata.num_rows for f in files]
    total = sum(rows)
    size = sum(os.path.getsize(p) for p in paths if "://" not in p)
    wanted = np.unique(np.linspace(0, max(total - 1, 0), min(n, total)).astype(np.int64)) if total else []
    texts: list[str | None] = []
    ids: list[str] = []
    start = 0
    for path, f, count in zip(paths, files, rows, strict=True):
        local = [int(w) - start for w in wanted if start <= w < start + count]
        start += count
        if not local:
            continue
        groups, offsets = [], np.cumsum([0] + [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)])
        for r in local:
            groups.append(int(np.searchsorted(offsets, r, side="right") - 1))
        chosen = sorted(set(groups))
        columns = [spec.columns.text] + ([spec.columns.id] if spec.columns.id in f.schema_arrow.names else [])
        table = f.read_row_groups(chosen, columns=columns)
        base = {g: int(sum(f.metadata.row_group(x).num_rows for x in chosen if x < g)) for g in chosen}
        at = [base[g] + r - int(offsets[g]) for g, r in zip(groups, local, strict=True)]
        picked = table.take(pa.array(at, pa.int64()))
        texts += picked[spec.columns.text].to_pylist()
        if spec.columns.id in picked.column_names:
            ids += [str(x) for x in picked[spec.columns.id].to_pylist()]
        else:
            ids += [f"{Path(path).stem}:{r}" for r in local]
    return pa.table({"id": ids, "text": pa.array(texts, pa.string())}), total, size


def _measure(spec: JobSpec, docs: pa.Table, root: Path) -> tuple[dict, list[dict], dict]:
    """Seconds per step, the funnel and bytes per stage folder of one sample run."""
    run_stages([(s.stage, s.params) for s in spec.stages], docs, workdir=root)
    folder = JobFolder(root / "job")
    seconds: dict[str, float] = {}
    for step_dir in (folder.root / "_done").iterdir():
        if step_dir.is_dir():
            seconds[step_dir.name] = sum(folder.read_marker(step_dir.name, p.stem).get("seconds", 0.0)
                                         for p in step_dir.glob("*.json"))
        elif step_dir.suffix == ".json":
            seconds[step_dir.stem] = folder.read_marker(step_dir.stem)["seconds"]
    sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*.parquet") if f.parent.name in ("scores", "decisions")
                         or f.parent.name.startswith("scores-"))
             for d in (folder.root / "stages").iterdir()}
    fit_bytes = {d.name: sum(pq.read_table(f).nbytes for f in d.glob("fit*.parquet"))
                 for d in (folder.root / "stages").iterdir()}
    output = sum(f.stat().st_size for f in folder.data_dir.rglob("*.parquet")) \
        if folder.data_dir.exists() else 0
    return seconds, folder.funnel(), {"stage": sizes, "fit_table": fit_bytes, "output": output}


def _measure_sample(spec: JobSpec, docs: pa.Table, workdir: Path | None) -> tuple:
    """The warm-up, then the half and the whole sample measured: (seconds, funnel) of each
    and the whole sample's bytes; PlanError naming the stage that failed on it."""
    small = docs.take(pa.array(range(0, docs.num_rows, 2)))
    root = Path(tempfile.mkdtemp(prefix="curate-plan-", dir=workdir))
    whole_ran = False
    try:
        # A warm-up on the whole sample first: one-off costs of this process (a compiled
        # loop's first call, a code path only some documents reach, imports, the file cache)
        # land there, not in the line. Before it, one such cost of 2 s in the larger sample
        # read as 10 ms a document: 12 h of CPU for a 10 M-document MinHash job of 0.4 h.
        _measure(spec, docs, root / "warm-up")
        whole_ran = True
        s1, f1, _ = _measure(spec, small, root / "half")
        s2, f2, b2 = _measure(spec, docs, root / "full")
    except (JobError, ValueError, RuntimeError, OSError) as exc:  # a fit's own error is raised as is
        stage = exc.where.get("stage") if isinstance(exc, JobError) else None
        raise PlanError(f"cannot measure the job on a sample of {docs.num_rows} documents: {stage or 'a stage'} "
                        f"failed on it ({exc}); a larger --sample may help", reason=f"{stage or 'a stage'}: {exc}",
                        too_small=whole_ran) from None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return s1, f1, s2, f2, b2


def _line(t1: float, d1: float, t2: float, d2: float) -> tuple[float, float]:
    """(fixed, per_doc) through two measurements; a noisy pair falls back to proportional."""
    if d2 > d1 and t2 >= t1:
        per_doc = (t2 - t1) / (d2 - d1)
        return max(t2 - per_doc * d2, 0.0), per_doc
    return 0.0, t2 / d2 if d2 else 0.0


def plan(spec: JobSpec, *, sample: int = 400, cpus: int | None = None, memory_bytes: int | None = None,
         workdir: Path | None = None) -> dict:
    """The estimate. When the whole sample runs but its half fails (too few documents
    reach a late stage's fit), the sample is doubled, up to ``RESAMPLES`` times, and the
    result says so."""
    cpus = cpus or os.cpu_count() or 1
    memory_bytes = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    started = time.perf_counter()
    resampled: list[str] = []
    while True:
        docs, rows, input_bytes = _sample(spec, sample)
        if docs.num_rows == 0:
            raise ValueError("the inputs hold no rows: nothing to plan")
        try:
            s1, f1, s2, f2, b2 = _measure_sample(spec, docs, workdir)
            break
        except PlanError as exc:
            if not exc.too_small or docs.num_rows >= rows or len(resampled) == RESAMPLES:
                raise
            resampled.append(f"a sample of {docs.num_rows} was too small ({exc.reason})")
            sample = docs.num_rows * 2
    n = docs.num_rows
    scale = rows / n
    unit_rows = spec.execution.unit_rows or min(MAX_UNIT_ROWS, max(MIN_UNIT_ROWS, math.ceil(rows / (2 * cpus))))
    units = max(1, math.ceil(rows / unit_rows))
    workers = min(cpus, units)
    stages, total_wall = [], 0.0
    built = build_stages(spec)
    # As the job chooses it (``workers.job``): one count for all its bucketed fits, from its input rows.
    job_buckets = spec.execution.fit_buckets or bucket_count(rows, built, spec.execution.fit_task_memory_mb)
    for i, (stage, a, b) in enumerate(zip(built, f1, f2, strict=True)):
        docs_full = b["docs_in"] * scale
        unit_s = fit_s = 0.0
        buckets, notes = _buckets(spec, stage, docs_full, memory_bytes, job_buckets)
        for step in stage_steps(i, stage):
            fixed, per_doc = _line(s1.get(step.name, 0.0), a["docs_in"], s2.get(step.name, 0.0), b["docs_in"])
            if step.kind == "fit":  # a bucketed fit's per-document work runs as tasks on every CPU
                in_tasks = stage.bucket_by or step.method == stage.regroup_fit  # not prepare/train
                tasks = min(cpus, buckets) if buckets and in_tasks else 1
                fit_s += fixed + per_doc * docs_full / tasks
            else:
                unit_s += per_doc * docs_full + fixed * units
        folder = f"{i:02d}-{stage.name}"
        fit_memory = int(b2["fit_table"].get(folder, 0) / max(b["docs_in"], 1) * docs_full)
        if stage.sample_undercounts:
            notes.append(f"removes duplicates: a sample of {n} holds both copies of few pairs, so expect more "
                         "removals than estimated (and fewer documents for later stages)")
        if fit_memory > memory_bytes / 2:
            notes.append(f"its fit result (~{fit_memory / 2**30:.1f} GiB) is held in memory by every worker: more "
                         f"than half a node's {memory_bytes / 2**30:.0f} GiB; split the input into several jobs")
        if stage.uses_model() and getattr(stage.params, "num_gpus", 0):
            notes.append("measured on CPU; its GPU time is not estimated")
        wall = unit_s / workers + fit_s
        total_wall += wall
        stages.append(StageCost(
            index=i, stage=stage.name, kind=stage.kind, docs_in=round(docs_full), docs_out=round(b["docs_out"] * scale),
            tokens_in=round(b["text_bytes_in"] * scale / CHARS_PER_TOKEN), cpu_hours=(unit_s + fit_s) / 3600,
            wall_hours=wall / 3600, fit_seconds=fit_s, fit_memory_bytes=fit_memory,
            disk_bytes=round(b2["stage"].get(folder, 0) * scale), fit_buckets=buckets, note="; ".join(notes) or None))
    write_s = s2.get("write", 0.0) * scale / workers
    return {
        "input": {"rows": rows, "bytes": input_bytes, "sample": n, "sampled_seconds": round(time.perf_counter() -
                                                                                          started, 2),
                  "resampled": resampled},
        "cluster": {"cpus": cpus, "memory_bytes": memory_bytes, "units": units, "unit_rows": unit_rows},
        "stages": [asdict(s) for s in stages],
        "total": {"cpu_hours": sum(s.cpu_hours for s in stages) + write_s / 3600,
                  "wall_hours": (total_wall + write_s) / 3600,
                  "disk_bytes": sum(s.disk_bytes for s in stages) + round(b2["output"] * scale),
                  "output_bytes": round(b2["output"] * scale), "output_rows": stages[-1].docs_out},
    }


def _buckets(spec: JobSpec, stage, docs: float, memory_bytes: int, chosen: int) -> tuple[int | None, list[str]]:
    """What to say about ``stage``'s fit in the job's ``chosen`` buckets (None: not bucketed)."""
    per_doc = doc_key_bytes(stage)
    if not per_doc:
        return None, []
    budget = spec.execution.fit_task_memory_mb
    keys = docs * stage.keys_per_doc()
    held = docs * per_doc / chosen
    if chosen == 1 and held > memory_bytes / 2:
        return chosen, [f"its single-node fit groups {keys:,.0f} keys (~{held / 2**30:.1f} GiB) on one node, more "
                        f"than half its memory; leave execution.fit_buckets unset (or raise it) to split the fit"]
    if chosen == 1:
        return chosen, []
    if stage.regroup_fit:  # a bucket's rows are sorted out of core; one cluster at a time is held
        return chosen, [f"fit in {chosen} buckets of ~{docs / chosen:,.0f} documents (~{held / 2**20:,.0f} MiB a "
                        f"task, sorted out of core; its largest cluster must fit half of "
                        f"execution.fit_task_memory_mb = {budget})"]
    note = (f"fit in {chosen} buckets of ~{keys / chosen:,.0f} keys (~{held / 2**20:,.0f} MiB a task; "
            f"execution.fit_task_memory_mb = {budget})")
    if held > budget * 2**20 / 2:
        note += ": over half the budget, so a bucket would fail; raise execution.fit_buckets or the budget"
    return chosen, [note]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _hours(h: float) -> str:
    return f"{h * 3600:.1f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def format_plan(p: dict) -> str:
    c, t = p["cluster"], p["total"]
    lines = [f"input: {p['input']['rows']:,} documents ({_size(p['input']['bytes'])}); measured on a sample of "
             f"{p['input']['sample']} in {p['input']['sampled_seconds']} s",
             f"cluster: {c['cpus']} CPUs, {_size(c['memory_bytes'])} per node; {c['units']} work units of "
             f"{c['unit_rows']:,} rows",
             *(f"  ! {note}; sampled more" for note in p["input"].get("resampled", [])),
             f"{'stage':<22} {'docs in':>12} {'kept':>12} {'tokens in':>14} {'CPU':>9} {'wall':>9} {'fit':>9} "
             f"{'fit memory':>10} {'disk':>10}"]
    for s in p["stages"]:
        lines.append(f"{s['stage']:<22} {s['docs_in']:>12,} {s['docs_out']:>12,} {s['tokens_in']:>14,} "
                     f"{_hours(s['cpu_hours']):>9} {_hours(s['wall_hours']):>9} {_hours(s['fit_seconds'] / 3600):>9} "
                     f"{_size(s['fit_memory_bytes']):>10} {_size(s['disk_bytes']):>10}")
        for note in (s["note"] or "").split("; ") if s["note"] else []:
            lines.append(f"  ! {note}")
    lines.append(f"total: {_hours(t['wall_hours'])} wall, {_hours(t['cpu_hours'])} CPU, {_size(t['disk_bytes'])} "
                 f"of disk ({_size(t['output_bytes'])} of outputs, {t['output_rows']:,} documents); wall time "
                 "leaves out Ray's start-up and scheduling")
    return "\n".join(lines)
