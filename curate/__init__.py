"""The public Python API of curate: what your own code (a notebook, a training script, a
stage of your own) imports. Import from ``curate`` only; the top-level ``filters``,
``workers`` and ``service`` packages are the service's internals and may change.

    import curate
    run = curate.run_stages([curate.stage("exact_dedup_v1"), ("c4_lines_v1", {"min_sentences": 3})], table)
    spec = curate.load_spec("job.yaml")                 # validated, as the CLI and the API do
    schema = curate.spec_json_schema()                  # JSON Schema of job specs (editors, CI)

Writing a stage: subclass ``curate.Stage`` (score -> [fit] -> select) or
``curate.TransformStage`` and register it with ``CURATE_STAGES=my_pkg.stages:MyStageV1``
(or the ``curate.stages`` entry point). Reading a job's output into training:
``curate.loader`` (``CuratedDataset``, ``torch_dataset``). A REST client will live here too.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from filters.base import (
    DROP,
    EDIT,
    FIT,
    KEEP,
    SCORE,
    Fitted,
    InputPath,
    ModelParams,
    NewDoc,
    OptionalInputPath,
    Phase,
    ScoreView,
    Selection,
    Stage,
    StageParams,
    Transformed,
    TransformStage,
)
from filters.registry import STAGES, get_stage
from workers.export_scores import export_scores
from workers.job import JobError, run_job
from workers.local import LocalRun, run_stage, run_stages
from workers.shards import InputError
from workers.spec import JobSpec, SpecError, load_spec, local_paths, parse_spec, spec_json_schema

try:
    __version__ = version("curate")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"


def stage(name: str, params: dict | None = None) -> Stage:
    """A registered stage by versioned name, with its params validated."""
    return get_stage(name)(params)


__all__ = [
    "DROP", "EDIT", "FIT", "KEEP", "SCORE", "STAGES", "Fitted", "InputError", "InputPath", "JobError", "JobSpec",
    "LocalRun", "ModelParams", "NewDoc", "OptionalInputPath", "Phase", "ScoreView", "Selection", "SpecError",
    "Stage", "StageParams", "TransformStage", "Transformed", "__version__", "export_scores", "get_stage", "load_spec",
    "local_paths",
    "parse_spec", "run_job", "run_stage", "run_stages", "spec_json_schema", "stage",
]
