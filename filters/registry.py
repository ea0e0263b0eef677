"""Every stage the product knows, by versioned name.

Built-in stages are listed here. Stages of your own register without forking: name
them in ``CURATE_STAGES`` (``module:Class`` or ``/path/to/file.py:Class``, comma-separated)
or in the ``curate.stages`` entry-point group of an installed package. Set the variable
for every process of a job (CLI, service, Ray head and workers).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from filters.base import Stage
from filters.c4_lines import C4LinesV1
from filters.concept_prune import ConceptPruneV1
from filters.decontam import DecontamV1
from filters.exact_dedup import ExactDedupV1
from filters.input_check import InputCheckV1
from filters.minhash import MinHashDedupV1
from filters.perplexity import PerplexityV1
from filters.preselect import PreselectV1
from filters.quality_rules import QualityRulesV1
from filters.rephrase import RephraseV1

BUILTIN: tuple[type[Stage], ...] = (InputCheckV1, ExactDedupV1, QualityRulesV1, MinHashDedupV1, PerplexityV1,
                                    C4LinesV1, PreselectV1, ConceptPruneV1, RephraseV1, DecontamV1)

# Runs first in every job so null/empty texts are recorded with a reason, never lost.
BUILTIN_FIRST_STAGE = InputCheckV1.name
RESERVED_STEP_NAMES = {"select", "transform", "write"}


class StageDefinitionError(TypeError):
    """A stage class that breaks the contract; the message names the class and the rule."""


def check_stage_class(cls: type[Stage]) -> type[Stage]:
    """The contract rules a planner relies on, checked once when a stage is registered."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not getattr(cls, "name", None):
        raise StageDefinitionError(f"{where}: set a versioned `name`, e.g. my_filter_v1")
    methods = set()
    for phase in cls.phases:
        if phase.kind not in ("score", "fit"):
            raise StageDefinitionError(f"{where}: phase kind {phase.kind!r} is not score or fit")
        if phase.method in RESERVED_STEP_NAMES or phase.method in methods:
            raise StageDefinitionError(f"{where}: phase method {phase.method!r} is reserved or used twice")
        if not callable(getattr(cls, phase.method, None)):
            raise StageDefinitionError(f"{where}: phase {phase.kind} names method {phase.method!r}, which it lacks")
        methods.add(phase.method)
    if cls.kind == "filter" and not any(p.kind == "score" for p in cls.phases):
        raise StageDefinitionError(f"{where}: a filter stage needs a scoring phase before select")
    if cls.kind == "filter" and cls.select is Stage.select:
        raise StageDefinitionError(f"{where}: a filter stage implements select(scores, fitted)")
    if cls.kind == "transform" and cls.transform is Stage.transform:
        raise StageDefinitionError(f"{where}: a transform stage implements transform(docs, fitted)")
    unknown = cls.Params.execution_fields - set(cls.Params.model_fields)
    if unknown:
        raise StageDefinitionError(f"{where}: execution_fields {sorted(unknown)} are not params fields")
    return cls


def _load_plugin(ref: str) -> type[Stage]:
    target, _, attr = ref.strip().rpartition(":")
    if not target or not attr:
        raise StageDefinitionError(f"CURATE_STAGES entry {ref!r}: expected module:Class or /path/file.py:Class")
    if target.endswith(".py"):
        path = Path(target)
        spec = importlib.util.spec_from_file_location(f"curate_stage_{path.stem}", path)
        if spec is None or spec.loader is None or not path.exists():
            raise StageDefinitionError(f"CURATE_STAGES entry {ref!r}: no file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: pickling, docs and tracebacks find it
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    cls = getattr(module, attr, None)
    if not (inspect.isclass(cls) and issubclass(cls, Stage)):
        raise StageDefinitionError(f"CURATE_STAGES entry {ref!r}: {attr} is not a Stage subclass")
    return cls


def _discover() -> dict[str, type[Stage]]:
    classes = list(BUILTIN)
    classes += [ep.load() for ep in entry_points(group="curate.stages")]
    classes += [_load_plugin(r) for r in os.environ.get("CURATE_STAGES", "").split(",") if r.strip()]
    stages: dict[str, type[Stage]] = {}
    for cls in classes:
        check_stage_class(cls)
        if cls.name in stages and stages[cls.name] is not cls:
            raise StageDefinitionError(f"two stages are named {cls.name!r}: {stages[cls.name]} and {cls}")
        stages[cls.name] = cls
    return stages


STAGES: dict[str, type[Stage]] = _discover()


def get_stage(name: str) -> type[Stage]:
    try:
        return STAGES[name]
    except KeyError:
        known = ", ".join(sorted(n for n in STAGES if n != BUILTIN_FIRST_STAGE))
        raise KeyError(f"unknown stage {name!r}; known stages: {known}") from None
