"""The job spec: one pydantic model shared by the CLI and the REST API.

Everything is validated when the spec is parsed (stage names, stage params, column
names, paths), never for the first time inside a Ray task.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters.registry import BUILTIN_FIRST_STAGE, get_stage


class SpecError(ValueError):
    """An invalid job spec; the message names every failing field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Columns(_Strict):
    text: str = Field("text", min_length=1, description="column holding the document text")
    id: str = Field("id", min_length=1, description="unique document id; derived from shard and row when absent")


class StageSpec(_Strict):
    stage: str = Field(description="versioned stage name, e.g. quality_rules_v1")
    params: dict[str, Any] = Field(default_factory=dict)

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
    num_workers: int | None = Field(None, ge=1, description="parallel shard workers; default: cluster CPUs")
    allow_empty_shards: bool = Field(False, description="accept input shards with zero rows")


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    inputs: list[str] = Field(min_length=1, description="Parquet paths or globs (fsspec URLs allowed)")
    output: str = Field(min_length=1, description="local folder for outputs, lineage and markers")
    columns: Columns = Field(default_factory=Columns)
    stages: list[StageSpec] = Field(min_length=1)
    execution: Execution = Field(default_factory=Execution)

    @field_validator("output")
    @classmethod
    def _local_output(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError("only local output folders are supported (atomic rename needs a local filesystem)")
        return value.removeprefix("file://")

    def spec_hash(self) -> str:
        """Hash of the canonical JSON form: equal specs hash equal whatever their YAML layout."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def job_id(self) -> str:
        return f"{self.name}-{self.spec_hash()[:10]}"


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
