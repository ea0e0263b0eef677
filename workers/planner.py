"""Turns a job's stages into steps and passes.

Per stage: its phases (per-document scoring, corpus-wide fits) in order, then ``select``
(filter) or ``transform``. Per-unit steps chain inside a *pass*, which maps over work
units; a fit ends a pass (it needs every unit's scores) and runs between passes. A pass
holds the per-unit steps of at most one model stage, so each model stage gets its own
actor pool. After the last pass, one write per input shard assembles the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from filters.base import Stage
from workers.job_folder import WRITE_STEP, step_name


@dataclass(frozen=True)
class Step:
    kind: Literal["score", "fit", "select", "transform"]
    stage_index: int
    stage: str
    method: str  # the stage method that implements it

    @property
    def name(self) -> str:
        return step_name(self.stage_index, self.stage, self.method)


@dataclass(frozen=True)
class Pass:
    steps: tuple[Step, ...]  # per-unit steps, in order
    model_stage: int | None  # the stage whose actor pool runs the pass; None: plain tasks
    fit_after: Step | None  # the corpus-wide step that runs once the pass is done


def stage_steps(index: int, stage: Stage) -> list[Step]:
    steps = [Step(p.kind, index, stage.name, p.method) for p in stage.phases]
    final = "transform" if stage.kind == "transform" else "select"
    return [*steps, Step(final, index, stage.name, final)]  # type: ignore[arg-type]


def _needs_model(step: Step, stage: Stage) -> bool:
    return stage.uses_model() and step.kind in ("score", "transform")


def plan_passes(stages: list[Stage]) -> list[Pass]:
    passes: list[Pass] = []
    steps: list[Step] = []
    model: int | None = None
    for index, stage in enumerate(stages):
        for step in stage_steps(index, stage):
            if step.kind == "fit":
                passes.append(Pass(tuple(steps), model, step))
                steps, model = [], None
                continue
            if _needs_model(step, stage):
                if model is not None and model != index:  # another model stage: its own pool
                    passes.append(Pass(tuple(steps), model, None))
                    steps = []
                model = index
            steps.append(step)
    passes.append(Pass(tuple(steps), model, None))
    return [p for p in passes if p.steps or p.fit_after]


def step_names(stages: list[Stage]) -> dict[str, list[str]]:
    """What job.json records so progress can be read without the stage classes."""
    unit_steps = [s.name for i, st in enumerate(stages) for s in stage_steps(i, st) if s.kind != "fit"]
    fits = [s.name for i, st in enumerate(stages) for s in stage_steps(i, st) if s.kind == "fit"]
    return {"unit": unit_steps, "fit": fits, "shard": [WRITE_STEP]}


def last_fit_before(stage: Stage, method: str | None) -> str | None:
    """The fit phase whose result a step of ``stage`` gets: the last fit before the phase
    ``method`` (None: before select/transform, i.e. the stage's last fit)."""
    fit = None
    for phase in stage.phases:
        if phase.method == method:
            break
        if phase.kind == "fit":
            fit = phase.method
    return fit


def score_phases(stage: Stage, before: str | None = None) -> list[str]:
    """The stage's scoring phases (before the phase ``before``, or all of them)."""
    found = []
    for phase in stage.phases:
        if phase.method == before:
            break
        if phase.kind == "score":
            found.append(phase.method)
    return found
