"""Runs a segment of steps (score / select / write) over one shard.

A document reaches stage ``i`` iff stage ``i-1`` kept it, so the docs a stage sees are
always "rows kept in the previous stage's decision file". That makes every step
restartable from files alone: a step whose marker exists is skipped, and the next one
reads what it needs from disk. Stages are built once per runner (once per Ray actor).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.base import ID, TEXT, Selection, Stage
from filters.registry import BUILTIN_FIRST_STAGE, get_stage
from workers import atomic
from workers.layout import JobLayout
from workers.shards import ROW, InputError, Shard, read_shard
from workers.spec import JobSpec

KEEP, DROP = "keep", "drop"
SCORES_MAP = pa.map_(pa.string(), pa.float64())


@dataclass(frozen=True)
class Step:
    kind: Literal["score", "select", "write"]
    stage_index: int = -1
    stage: str = ""

    @property
    def name(self) -> str:
        return "write" if self.kind == "write" else f"{self.stage_index:02d}-{self.stage}.{self.kind}"


def build_stages(spec: JobSpec) -> list[Stage]:
    """Index 0 is the built-in input check; spec stages follow in order."""
    stages: list[Stage] = [get_stage(BUILTIN_FIRST_STAGE)()]
    stages += [get_stage(s.stage)(s.params) for s in spec.stages]
    return stages


def numeric_scores(scores: pa.Table, extra: dict[str, list[float | None]] | None) -> pa.Array:
    """Every numeric score of each doc as one map column, so lineage has one schema."""
    names = [
        n for n in scores.column_names
        if n not in (ID, ROW) and (pa.types.is_integer(scores[n].type) or pa.types.is_floating(scores[n].type)
                                   or pa.types.is_boolean(scores[n].type))
    ]
    columns = {n: pc.cast(scores[n], pa.float64()).to_pylist() for n in names}
    columns.update(extra or {})
    rows = [[(n, v[i]) for n, v in columns.items() if v[i] is not None] for i in range(scores.num_rows)]
    return pa.array(rows, SCORES_MAP)


def decisions_table(job_id: str, index: int, stage: str, shard: Shard, scores: pa.Table, sel: Selection) -> pa.Table:
    n = scores.num_rows
    nulls = pa.nulls(n, pa.string())
    return pa.table({
        "job_id": pa.repeat(job_id, n).cast(pa.string()) if n else pa.array([], pa.string()),
        "stage_index": pa.array([index] * n, pa.int32()),
        "stage": pa.array([stage] * n, pa.string()),
        "shard": pa.array([shard.path] * n, pa.string()),
        ROW: scores[ROW],
        "doc_id": scores[ID],
        "decision": pa.array([KEEP if k else DROP for k in sel.keep], pa.string()),
        "reason": pa.array(sel.reason, pa.string()),
        "scores": numeric_scores(scores, sel.extra_scores),
        "cluster_id": pa.array(sel.cluster_id, pa.string()) if sel.cluster_id is not None else nulls,
        "survivor_id": pa.array(sel.survivor_id, pa.string()) if sel.survivor_id is not None else nulls,
    })


class ShardRunner:
    def __init__(self, spec: JobSpec, job_id: str) -> None:
        self.spec = spec
        self.job_id = job_id
        self.layout = JobLayout(spec.output)
        self.stages = build_stages(spec)
        self._fitted: dict[int, pa.Table] = {}

    def run(self, shard: Shard, steps: list[Step]) -> dict:
        """Run the steps not yet marked done; never raises, returns ``error`` instead."""
        try:
            return {"shard": shard.key, "ran": self._run(shard, steps), "error": None}
        except InputError as exc:
            return {"shard": shard.key, "ran": [], "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported with the shard named, job fails cleanly
            return {
                "shard": shard.key, "ran": [],
                "error": f"{shard.path}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}",
            }

    def _run(self, shard: Shard, steps: list[Step]) -> list[str]:
        state = _ShardState(shard, self)
        ran = []
        for step in steps:
            marker = self.layout.marker(step.name, shard.key)
            if marker.exists():
                continue
            started = time.perf_counter()
            facts = getattr(self, f"_{step.kind}")(state, step)
            facts["seconds"] = round(time.perf_counter() - started, 6)
            atomic.write_json(facts, marker)
            ran.append(step.name)
        return ran

    def _score(self, state: _ShardState, step: Step) -> dict:
        docs = state.docs_at(step.stage_index)
        scores = self.stages[step.stage_index].score(docs.select([ID, TEXT]))
        if scores.num_rows != docs.num_rows:
            raise ValueError(f"stage {step.stage} returned {scores.num_rows} score rows for {docs.num_rows} docs")
        table = pa.table({ID: docs[ID], ROW: docs[ROW]})
        for name in scores.column_names:
            table = table.append_column(name, scores[name])
        atomic.write_parquet(table, self.layout.scores(step.stage_index, step.stage, state.shard.key))
        state.scores[step.stage_index] = table
        return {"rows": docs.num_rows}

    def _select(self, state: _ShardState, step: Step) -> dict:
        i, shard = step.stage_index, state.shard
        scores = state.scores.get(i)
        if scores is None:
            scores = pq.read_table(self.layout.scores(i, step.stage, shard.key))
        stage = self.stages[i]
        sel = stage.select(scores, self._fit_result(i, step.stage) if stage.corpus_wide else None)
        decisions = decisions_table(self.job_id, i, step.stage, shard, scores, sel)
        atomic.write_parquet(decisions, self.layout.decisions(i, step.stage, shard.key))
        state.decisions[i] = decisions
        text_bytes = pc.binary_length(state.docs_at(i)[TEXT]).to_pylist()
        kept_bytes = sum(b or 0 for b, k in zip(text_bytes, sel.keep, strict=True) if k)
        score_marker = self.layout.marker(Step("score", i, step.stage).name, shard.key)
        stats = {
            "stage_index": i, "stage": step.stage, "shard": shard.path, "shard_key": shard.key,
            "docs_in": decisions.num_rows, "kept": sum(sel.keep), "dropped": decisions.num_rows - sum(sel.keep),
            "reasons": dict(Counter(r for r in sel.reason if r is not None)),
            "text_bytes_in": sum(b or 0 for b in text_bytes), "text_bytes_kept": kept_bytes,
            "score_seconds": atomic.read_json(score_marker)["seconds"] if score_marker.exists() else None,
        }
        atomic.write_json(stats, self.layout.stats(i, step.stage, shard.key))
        return {"rows": decisions.num_rows, "kept": stats["kept"]}

    def _write(self, state: _ShardState, step: Step) -> dict:
        rows = state.kept_rows(len(self.stages) - 1)
        table = state.table.take(rows)
        path = self.layout.output(state.shard.key)
        atomic.write_parquet(table, path)
        return {"rows": table.num_rows, "bytes": path.stat().st_size, "sha256": atomic.sha256_file(path)}

    def _fit_result(self, index: int, stage: str) -> pa.Table:
        if index not in self._fitted:
            self._fitted[index] = pq.read_table(self.layout.fit(index, stage))
        return self._fitted[index]


class _ShardState:
    """Lazily loaded data of one shard while a runner works through its steps."""

    def __init__(self, shard: Shard, runner: ShardRunner) -> None:
        self.shard = shard
        self.runner = runner
        self._loaded: tuple[pa.Table, pa.Table] | None = None
        self.scores: dict[int, pa.Table] = {}
        self.decisions: dict[int, pa.Table] = {}

    @property
    def table(self) -> pa.Table:
        if self._loaded is None:
            self._loaded = read_shard(self.shard, self.runner.spec)
        return self._loaded[0]

    @property
    def docs(self) -> pa.Table:
        self.table  # noqa: B018 - loads the shard
        return self._loaded[1]

    def kept_rows(self, index: int) -> pa.Array:
        """Input rows kept by stage ``index``, from memory or its decision file."""
        runner = self.runner
        if index not in self.decisions:
            stage = runner.stages[index].name
            self.decisions[index] = pq.read_table(
                runner.layout.decisions(index, stage, self.shard.key), columns=[ROW, "decision"]
            )
        decisions = self.decisions[index]
        return decisions.filter(pc.equal(decisions["decision"], KEEP))[ROW].combine_chunks()

    def docs_at(self, index: int) -> pa.Table:
        """The docs that reach stage ``index``."""
        return self.docs if index == 0 else self.docs.take(self.kept_rows(index - 1))
