"""The job spec: one pydantic model shared by the CLI and the REST API.

Everything is validated when the spec is parsed (stage names, stage params, column
names, path syntax), never for the first time inside a Ray task. Parsing never touches
the filesystem: every path a spec names (inputs, output, and each stage's ``InputPath``
fields) is resolved afterwards by ``resolve_paths`` with a rule the caller picks (the
CLI: relative to the working directory; the service: confined to its roots).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from filters.base import PathRef, path_fields
from filters.registry import BUILTIN_FIRST_STAGE, STAGES, get_stage


class SpecError(ValueError):
    """An invalid job spec; the message names every failing field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Columns(_Strict):
    text: str = Field("text", min_length=1, description="column holding the document text")
    id: str = Field("id", min_length=1, description="unique document id; derived from shard and row when absent")


@lru_cache(maxsize=1)
def _stage_models() -> dict[str, type[BaseModel]]:
    """One model per registered stage, ``{stage: <name>, params: <its Params>}``: what the
    published schema offers for each entry of ``stages``."""
    models = {}
    for name, cls in sorted(STAGES.items()):
        if name == BUILTIN_FIRST_STAGE:
            continue
        module = sys.modules.get(cls.__module__)
        doc = (cls.__doc__ or (module and module.__doc__) or name).strip().split("\n\n")[0]
        doc = " ".join(doc.split())
        models[name] = create_model(
            f"Stage_{name}", __config__=ConfigDict(extra="forbid", title=name),
            stage=(Literal[name], Field(description=doc)),  # type: ignore[valid-type]
            params=(cls.Params, Field(default_factory=cls.Params, description=f"parameters of {name}")),
        )
    return models


class StageSpec(_Strict):
    """One stage of a job. Validated against the stage's own params model; the JSON
    Schema (``curate schema``, OpenAPI) is the union of every registered stage's model,
    discriminated by ``stage``, so editors and fuzzers see each stage's parameters."""

    stage: str = Field(description="versioned stage name, e.g. quality_rules_v1")
    params: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler) -> dict[str, Any]:
        models = _stage_models()
        return {"title": "StageSpec", "description": " ".join(cls.__doc__.split()),
                "oneOf": [handler(model.__pydantic_core_schema__) for model in models.values()],
                "discriminator": {"propertyName": "stage"}}

    @model_validator(mode="after")
    def _check_stage(self) -> StageSpec:
        if self.stage == BUILTIN_FIRST_STAGE:
            raise ValueError(f"{BUILTIN_FIRST_STAGE} runs first in every job; do not list it")
        try:
            cls = get_stage(self.stage)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        try:
            self.params = cls.Params.model_validate(self.params).model_dump(mode="json")
        except ValidationError as exc:
            details = "; ".join(
                f"params{''.join('.' + str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ValueError(details) from None
        return self


class Execution(_Strict):
    """How to run, never what comes out: left out of the spec hash, so it may change
    between a run and its resume."""

    num_workers: int | None = Field(None, ge=1, description="parallel workers for steps without a model; "
                                    "default: cluster CPUs")
    unit_rows: int | None = Field(None, ge=1, description="rows per work unit (a shard is split into units so "
                                  "every worker has work); default: about input rows / (2 x cluster CPUs). "
                                  "Fixed when a job folder is first created; outputs never depend on it")
    allow_empty_shards: bool = Field(False, description="accept input shards with zero rows")
    fit_task_memory_mb: int = Field(2048, ge=1, description="memory budget of one task of a bucketed corpus-wide "
                                    "fit (MinHash, exact dedup, concept clusters): sets the default fit_buckets and "
                                    "each task's Ray memory request; a bucket that would need more fails naming this "
                                    "setting")
    fit_buckets: int | None = Field(None, ge=1, le=4096, description="buckets the keys of a bucketed fit (MinHash "
                                    "band keys, exact-dedup hashes, concept clusters) are hashed into, one Ray "
                                    "task each (1: the single-node fit); default: enough that a bucket fits half of "
                                    "fit_task_memory_mb. "
                                    "Fixed when a job folder is first created; outputs never depend on it")


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    inputs: list[str] = Field(min_length=1, description="Parquet paths or globs (fsspec URLs allowed)")
    output: str = Field(min_length=1, description="local folder for outputs, lineage and markers")
    columns: Columns = Field(default_factory=Columns)
    stages: list[StageSpec] = Field(min_length=1)
    execution: Execution = Field(default_factory=Execution)

    @model_validator(mode="after")
    def _stages_fit_together(self) -> JobSpec:
        """Checks a stage makes against the stages before it (e.g. a score it reads)."""
        before = [BUILTIN_FIRST_STAGE]
        errors = []
        for i, st in enumerate(self.stages):
            cls = get_stage(st.stage)
            try:
                cls.check_in_job(cls.Params.model_validate(st.params), list(before))
            except ValueError as exc:
                errors.append(f"stages.{i}: {exc}")
            before.append(st.stage)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @field_validator("output")
    @classmethod
    def _local_output(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError("only local output folders are supported (atomic rename needs a local filesystem)")
        return value.removeprefix("file://")

    def spec_hash(self) -> str:
        """Hash of the canonical JSON form of what decides the outputs: equal specs hash
        equal whatever their YAML layout, and execution settings (the ``execution`` block,
        each stage's ``execution_fields`` such as ``num_actors``) are left out."""
        data = self.model_dump(mode="json", exclude={"execution"})
        for stage, spec in zip(data["stages"], self.stages, strict=True):
            skip = get_stage(spec.stage).Params.execution_fields
            stage["params"] = {k: v for k, v in stage["params"].items() if k not in skip}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def job_id(self) -> str:
        return f"{self.name}-{self.spec_hash()[:10]}"


# (location in the spec, value, PathRef or None for inputs/output) -> the resolved value
PathResolver = Callable[[str, str, PathRef | None], str]


def spec_paths(spec: JobSpec) -> list[tuple[str, tuple, str, PathRef]]:
    """Every path a stage of the spec reads: (field, location in params, value, PathRef)."""
    found = []
    for i, st in enumerate(spec.stages):
        params = get_stage(st.stage).Params.model_validate(st.params)
        for loc, value, ref in path_fields(params):
            found.append((f"stages.{i}.params.{'.'.join(map(str, loc))}", (i, loc), value, ref))
    return found


def unsafe_path(value: str) -> str | None:
    """Why a path string is refused before any filesystem call, or None."""
    if not value:
        return "an empty path"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "a control character (NUL, newline, ...) in a path"
    return None


def resolve_paths(spec: JobSpec, resolve: PathResolver) -> JobSpec:
    """A copy of the spec with every path (inputs, output, stage files) passed through
    ``resolve``, which raises to refuse one; values in ``PathRef.names`` (e.g. a bundled
    model's name) are not paths and are left alone."""
    inputs = [resolve(f"inputs.{i}", v, None) for i, v in enumerate(spec.inputs)]
    output = resolve("output", spec.output, None)
    stages = [s.model_copy(deep=True) for s in spec.stages]
    for field, (i, loc), value, ref in spec_paths(spec):
        if value in ref.names:
            continue
        target = stages[i].params
        for part in loc[:-1]:
            target = target[part]
        target[loc[-1]] = resolve(field, value, ref)
    return spec.model_copy(update={"inputs": inputs, "output": output, "stages": stages})


def local_paths(spec: JobSpec, base: Path | None = None) -> JobSpec:
    """The CLI's rule: relative paths are relative to ``base`` (the working directory) and
    become absolute (Ray workers do not share the caller's working directory); a stage's
    file must exist. fsspec URLs in ``inputs`` pass through."""
    base = base or Path.cwd()

    def resolve(field: str, value: str, ref: PathRef | None) -> str:
        if unsafe_path(value):
            raise SpecError(f"{field}: {unsafe_path(value)}: {value!r}")
        if "://" in value:
            return value
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if ref is not None and not path.exists():
            raise SpecError(f"{field}: file not found: {value}")
        return str(path.resolve()) if ref is not None else str(path)

    return resolve_paths(spec, resolve)


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a job spec (YAML or JSON), every stage's params included."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"invalid job spec {source}:\n{format_validation_error(exc)}") from None


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read job spec {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"job spec {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"job spec {path} must be a mapping with name, inputs, output and stages")
    return parse_spec(data, str(path))
