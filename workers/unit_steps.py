"""Runs the per-unit steps of a pass (scoring phases, select, transform) on one work unit,
and the write of one output shard.

A unit's documents at stage ``i`` are the previous stage's survivors: the documents a
filter kept, or the new version a transform wrote. Every step reads what it needs from
the job folder and writes its results atomically before its completion marker, so a
step whose marker exists is skipped and a killed run resumes exactly. Stages are built
once per runner (once per Ray worker process or actor).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.base import DETAIL, ID, ORDER, PARENT_ID, RESCUED, TEXT, Fitted, Stage
from workers import atomic
from workers.bucketed_fit import write_partition
from workers.job_folder import ERROR_CODES, WRITE_STEP, JobFolder, step_name
from workers.lineage import (
    DROPPED,
    KEEP,
    ROW,
    Where,
    apply_transform,
    order_of,
    selection_lineage,
    text_bytes,
    unit_stats,
)
from workers.planner import Step, last_fit_before, score_phases
from workers.shards import InputError, Shard, Unit, docs_view, read_shard, read_unit_docs


@dataclass(frozen=True)
class RunContext:
    job_id: str
    folder: JobFolder
    text_column: str
    id_column: str
    stages: list[Stage]

    @property
    def has_transform(self) -> bool:
        return any(s.kind == "transform" for s in self.stages)

    @property
    def creates_documents(self) -> bool:
        return any(s.creates_documents for s in self.stages)


class StepError(Exception):
    """A failed step, carried as data: a code, the stage, shard, unit and row where known."""

    def __init__(self, code: str, message: str, **where) -> None:
        super().__init__(message)
        self.code, self.message, self.where = code, message, where

    def record(self) -> dict:
        return {"code": self.code, "message": self.message, **self.where}


def error_record(exc: BaseException, *, stage: str | None, shard: str | None, unit: str | None) -> dict:
    if isinstance(exc, StepError):
        return exc.record()
    if isinstance(exc, InputError):
        return {"code": exc.code, "message": str(exc), "stage": stage, "shard": exc.path or shard, "unit": unit,
                "row": exc.row}
    where = f"{stage}: " if stage else ""
    code = getattr(exc, "code", None)  # a stage's own error with a job error code, e.g. token_budget_spent
    if code not in ERROR_CODES:
        code = "stage_failed" if stage else "write_failed"
    return {"code": code, "stage": stage, "shard": shard, "unit": unit,
            "message": f"{where}{shard}: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


class UnitRunner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._fitted: dict[tuple[int, str, int], Fitted] = {}

    # -- entry points (never raise: a failure comes back as an error record) -----------
    def run(self, unit: Unit, steps: list[Step], *, write: bool = False) -> dict | None:
        """Run the steps not yet marked done; with ``write`` (the unit is its whole shard),
        then write the shard's output from the same in-memory state."""
        step = None
        try:
            state = _UnitState(unit, self)
            for step in steps:
                if self.ctx.folder.done(step.name, unit.key):
                    continue
                started = time.perf_counter()
                facts = getattr(self, f"_{step.kind}")(state, step)
                facts["seconds"] = round(time.perf_counter() - started, 6)
                self.ctx.folder.write_marker(step.name, unit.key, facts)
        except Exception as exc:  # noqa: BLE001 - reported with stage and unit named; the job fails cleanly
            return error_record(exc, stage=step.stage if step else None, shard=unit.shard.path, unit=unit.key)
        return self._write_marked(unit.shard, [state]) if write else None

    def write_shard(self, shard: Shard, units: list[Unit]) -> dict | None:
        return self._write_marked(shard, [_UnitState(u, self) for u in units])

    def _write_marked(self, shard: Shard, states: list[_UnitState]) -> dict | None:
        try:
            if not self.ctx.folder.done(WRITE_STEP, shard.key):
                self.ctx.folder.write_marker(WRITE_STEP, shard.key, self._write(shard, states))
            return None
        except Exception as exc:  # noqa: BLE001 - reported with the shard named
            return error_record(exc, stage=None, shard=shard.path, unit=None)

    # -- steps --------------------------------------------------------------------------
    def where(self, index: int, unit: Unit) -> Where:
        return Where(self.ctx.job_id, index, self.ctx.stages[index].name, unit.shard.path, unit.key)

    def _score(self, state: _UnitState, step: Step) -> dict:
        i, stage = step.stage_index, self.ctx.stages[step.stage_index]
        docs = state.docs_at(i)
        method = getattr(stage, step.method)
        fit = last_fit_before(stage, step.method)
        view = docs.select([ID, TEXT])
        scores = method(view) if fit is None else method(view, self.fitted(i, fit))
        if scores.num_rows != docs.num_rows:
            raise StepError("stage_failed", f"{stage.name}.{step.method} returned {scores.num_rows} score rows for "
                            f"{docs.num_rows} documents", stage=stage.name, shard=state.unit.shard.path,
                            unit=state.unit.key)
        table = pa.table({ID: docs[ID], ROW: docs[ROW], ORDER: docs[ORDER]})
        for name in scores.column_names:
            table = table.append_column(name, scores[name])
        atomic.write_parquet(table, self.ctx.folder.scores(i, stage.name, state.unit.key, step.method))
        buckets = self.ctx.folder.job().get("fit_buckets", 1) if stage.bucket_by in table.column_names else 1
        if buckets > 1:  # the keys of a bucketed fit, hashed into buckets here (workers/bucketed_fit.py)
            write_partition(stage, table, buckets, self.ctx.folder.bucket_keys(i, stage.name, state.unit.key))
        state.scores[(i, step.method)] = table
        return {"rows": docs.num_rows}

    def _select(self, state: _UnitState, step: Step) -> dict:
        i, stage, unit = step.stage_index, self.ctx.stages[step.stage_index], state.unit
        tables = [state.scores_of(i, m) for m in score_phases(stage)]
        fit = last_fit_before(stage, None)
        sel = stage.select(tables[-1], self.fitted(i, fit) if fit else None)
        docs = state.docs_at(i)
        lineage = selection_lineage(self.where(i, unit), docs, tables, sel)
        kept = docs.filter(pa.array(sel.keep, pa.bool_()))
        return self._record(state, i, lineage, docs, kept)

    def _transform(self, state: _UnitState, step: Step) -> dict:
        i, stage, unit = step.stage_index, self.ctx.stages[step.stage_index], state.unit
        docs = state.docs_at(i)
        fit = last_fit_before(stage, None)
        stage.workspace = self.ctx.folder.workspace(i, stage.name)  # this job's, also for a reused stage object
        view = docs.select([ID, TEXT, RESCUED] if RESCUED in docs.column_names else [ID, TEXT])
        result = stage.transform(view, self.fitted(i, fit) if fit else None)
        new_docs, lineage, scores = apply_transform(self.where(i, unit), docs, result)
        atomic.write_parquet(scores, self.ctx.folder.scores(i, stage.name, unit.key))
        atomic.write_parquet(new_docs, self.ctx.folder.version(i, stage.name, unit.key))
        state.versions[i] = new_docs
        return self._record(state, i, lineage, docs, new_docs, result.stats)

    def _record(self, state: _UnitState, i: int, lineage: pa.Table, docs_in: pa.Table, docs_out: pa.Table,
                stage_stats: dict[str, float] | None = None) -> dict:
        stage, folder, unit = self.ctx.stages[i].name, self.ctx.folder, state.unit
        atomic.write_parquet(lineage, folder.decisions(i, stage, unit.key))
        state.lineage[i] = lineage
        phases = [step_name(i, stage, m) for m in score_phases(self.ctx.stages[i])]
        seconds = [folder.read_marker(p, unit.key)["seconds"] for p in phases if folder.done(p, unit.key)]
        stats = unit_stats(self.where(i, unit), lineage, text_bytes(docs_in), text_bytes(docs_out),
                           round(sum(seconds), 6) if seconds else None, stage_stats)
        atomic.write_json(stats, folder.stats(i, stage, unit.key))
        return {"rows": stats["docs_in"], "kept": stats["kept"], "created": stats["created"]}

    def _write(self, shard: Shard, states: list[_UnitState]) -> dict:
        """One output shard: the input rows that survived every stage, every column passed
        through; with transforms, id and text are the last version's (a created document
        carries its source's other columns, and a ``parent_id`` column is added)."""
        final = [s.docs_at(len(self.ctx.stages)) for s in states]
        docs = pa.concat_tables(final) if final else None
        table = states[0].shard_table() if len(states) == 1 else read_shard(shard, self.ctx.id_column)
        rows = docs[ROW].combine_chunks() if docs is not None else pa.array([], pa.int64())
        out = table.take(rows)
        if self.ctx.has_transform:
            for column, source in ((self.ctx.id_column, ID), (self.ctx.text_column, TEXT)):
                out = out.set_column(out.schema.get_field_index(column), column, docs[source])
            if self.ctx.creates_documents:
                out = out.append_column(PARENT_ID, docs[PARENT_ID]).append_column(DETAIL, docs[DETAIL])
        path = self.ctx.folder.output(shard.key)
        atomic.write_parquet(out, path)
        return {"rows": out.num_rows, "bytes": path.stat().st_size, "sha256": atomic.sha256_file(path)}

    def fitted(self, index: int, phase: str) -> Fitted:
        stage, folder = self.ctx.stages[index].name, self.ctx.folder
        # Keyed by the fit's marker too: a worker process outlives a run, and a retry after a
        # fix (or --overwrite) may fit again.
        key = (index, phase, folder.marker(step_name(index, stage, phase)).stat().st_mtime_ns)
        if key not in self._fitted:
            table_path, artifacts = folder.fit(index, stage, phase), folder.artifacts(index, stage)
            self._fitted[key] = Fitted(pq.read_table(table_path) if table_path.exists() else None,
                                       artifacts if artifacts.exists() else None)
        return self._fitted[key]


class _UnitState:
    """A unit's documents and results while a runner works through its steps; anything not
    computed in this task is read back from the job folder."""

    def __init__(self, unit: Unit, runner: UnitRunner) -> None:
        self.unit, self.runner = unit, runner
        self.scores: dict[tuple[int, str], pa.Table] = {}
        self.lineage: dict[int, pa.Table] = {}
        self.versions: dict[int, pa.Table] = {}
        self._docs: dict[int, pa.Table] = {}
        self._shard_table: pa.Table | None = None

    def shard_table(self) -> pa.Table:
        """The whole input shard (read once per task)."""
        if self._shard_table is None:
            self._shard_table = read_shard(self.unit.shard, self.runner.ctx.id_column)
        return self._shard_table

    def _with_order(self, docs: pa.Table) -> pa.Table:
        return docs.append_column(ORDER, order_of(self.unit.index, docs.num_rows))

    def docs_at(self, index: int) -> pa.Table:
        """The documents that reach stage ``index`` (``len(stages)``: those that survive all)."""
        if index in self._docs:
            return self._docs[index]
        ctx, folder = self.runner.ctx, self.runner.ctx.folder
        if index == 0:
            # A unit that is its whole shard reads the shard once, for its docs and its output.
            whole = self.unit.start == 0 and self.unit.stop == self.unit.shard.rows
            docs = docs_view(self.unit, self.shard_table(), ctx.text_column, ctx.id_column) if whole else \
                read_unit_docs(self.unit, ctx.text_column, ctx.id_column)
            docs = docs.append_column(PARENT_ID, pa.nulls(docs.num_rows, pa.string()))
            docs = self._with_order(docs.append_column(DETAIL, pa.nulls(docs.num_rows, pa.string())))
        elif ctx.stages[index - 1].kind == "transform":
            prev = ctx.stages[index - 1].name
            version = self.versions.get(index - 1)
            if version is None:
                version = pq.read_table(folder.version(index - 1, prev, self.unit.key))
            docs = self._with_order(version)
        else:
            before = self.docs_at(index - 1)
            decision = self.lineage_at(index - 1)["decision"]
            if len(decision) != before.num_rows:
                raise RuntimeError(f"unit {self.unit.key}: stage {index - 1} has {len(decision)} decisions for "
                                   f"{before.num_rows} documents (job folder changed under the run?)")
            docs = before.filter(pc.equal(decision, KEEP))
        stage = ctx.stages[index] if index < len(ctx.stages) else None
        rescue = stage.rescues(stage.params) if stage is not None else None
        if rescue is not None:
            docs = self._with_rescued(docs, index, rescue)
        self._docs[index] = docs
        return docs

    def _with_rescued(self, docs: pa.Table, index: int, reason: str) -> pa.Table:
        """The survivors plus the documents the latest earlier stage that emits ``reason``
        dropped with it, in input order, the latter marked ``rescued`` (the spec check
        guarantees no transform lies between, so both share one version of the documents
        and its orders)."""
        stages = self.runner.ctx.stages
        emitting = [i for i in range(index) if reason in stages[i].reasons]
        if not emitting or stages[emitting[-1]].kind != "filter":
            raise StepError("stage_failed", f"{stages[index].name}: no filter stage before it drops with {reason!r}",
                            stage=stages[index].name, shard=self.unit.shard.path, unit=self.unit.key)
        source = emitting[-1]
        lineage = self.lineage_at(source)
        hit = pc.and_(pc.equal(lineage["decision"], DROPPED), pc.equal(lineage["reason"], reason))
        rescued = self.docs_at(source).filter(pc.fill_null(hit, False))
        table = pa.concat_tables([docs.append_column(RESCUED, pa.array([False] * docs.num_rows, pa.bool_())),
                                  rescued.append_column(RESCUED, pa.array([True] * rescued.num_rows, pa.bool_()))])
        return table.take(pc.sort_indices(table[ORDER]))

    def lineage_at(self, index: int) -> pa.Table:
        if index not in self.lineage:
            stage = self.runner.ctx.stages[index].name
            self.lineage[index] = pq.read_table(self.runner.ctx.folder.decisions(index, stage, self.unit.key),
                                                columns=["decision", "reason"])
        return self.lineage[index]

    def scores_of(self, index: int, phase: str) -> pa.Table:
        key = (index, phase)
        if key not in self.scores:
            stage = self.runner.ctx.stages[index].name
            self.scores[key] = pq.read_table(self.runner.ctx.folder.scores(index, stage, self.unit.key, phase))
        return self.scores[key]
