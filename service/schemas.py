"""What the REST API returns: one response model per route, so OpenAPI documents every
body (and schemathesis checks responses against it)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class _Open(BaseModel):
    """Responses may gain fields; clients should ignore ones they do not know."""

    model_config = ConfigDict(extra="allow")


class Page(_Open, Generic[T]):
    items: list[T]
    next: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")


class StageProgress(_Open):
    stage_index: int
    stage: str
    kind: str = Field(description="filter or transform")
    units_done: int
    units_total: int
    docs_in: int
    docs_out: int
    created: int


class Progress(_Open):
    fraction: float
    eta_seconds: float | None
    complete: bool
    stages: list[StageProgress]
    shards_written: int
    shards_total: int


class Job(_Open):
    job_id: str
    name: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None = None
    error_code: str | None = Field(None, description="why it failed, as a code: bad_input, stage_failed, "
                                   "model_load_failed, resources_unavailable, ...")
    output: str
    created_at: str
    attempts: int
    ray_submission_id: str | None
    progress: Progress | None = Field(None, description="per stage: units done / total, docs in / out / created; ETA")


class Preview(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str = Field(description="stage name (or index) in this job", examples=["quality_rules_v1"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"min_words": 30}])


class Health(_Open):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


class LineageRow(_Open):
    """What one stage recorded for one document."""

    stage_index: int
    stage: str
    decision: str = Field(description="keep or drop")
    reason: str | None
    change: str | None = Field(description="edited or created (transform stages), else null")
    scores: dict[str, float] | None
    cluster_id: str | None
    survivor_id: str | None
    parent_id: str | None
    shard: str
    unit: str | None
    row: int
    detail: dict[str, Any] | None = Field(None, description="non-numeric facts, e.g. a synthetic document's style, "
                                          "model, prompt hash and finish reason")


class SourceChain(_Open):
    doc_id: str
    stages: list[LineageRow]


class ChildRef(_Open):
    doc_id: str
    stage: str
    stage_index: int


class DocumentLineage(_Open):
    job_id: str
    doc_id: str
    outcome: str = Field(description="kept, dropped, pending or unknown")
    dropped_at: str | None
    reason: str | None
    created_by: str | None = Field(description="the transform stage that created this document, if one did")
    parent_id: str | None
    edited_by: list[str]
    sources: list[SourceChain] = Field(description="the documents it was created from, nearest first")
    children: list[ChildRef] = Field(description="documents created from it")
    stages: list[LineageRow]


class DocumentRow(_Open):
    doc_id: str
    parent_id: str | None
    stage: str
    stage_index: int
    decision: str
    reason: str | None
    change: str | None
    scores: dict[str, float] | None
    cluster_id: str | None
    survivor_id: str | None
    detail: dict[str, Any] | None = None


class DropRow(DocumentRow):
    shard: str
    unit: str | None
    row: int
    text_preview: str | None = Field(None, description="the first 300 characters the dropping stage saw")


class UnitStats(_Open):
    shard: str
    unit: str
    docs_in: int
    kept: int
    dropped: int
    created: int
    reasons: dict[str, int]
    score_seconds: float | None


class StageFunnel(_Open):
    stage_index: int
    stage: str
    kind: str
    docs_in: int
    kept: int
    dropped: int
    created: int
    edited: int
    docs_out: int
    reasons: dict[str, int]
    text_bytes_in: int
    text_bytes_out: int


class StageStats(StageFunnel):
    units: list[UnitStats]


class JobStats(_Open):
    job_id: str
    complete: bool
    stages: list[StageStats]


class OutputFile(_Open):
    path: str
    source: str
    rows: int
    bytes: int
    sha256: str


class Manifest(_Open):
    job_id: str
    name: str
    spec_hash: str
    code_version: str
    model_hashes: dict[str, str]
    artifacts: dict[str, dict[str, str]]
    columns: dict[str, str]
    input: dict[str, int]
    output: dict[str, int]
    files: list[OutputFile]
    funnel: list[StageFunnel]
    completed_at: str


class StagePlan(_Open):
    index: int
    stage: str
    kind: str
    docs_in: int
    docs_out: int
    tokens_in: int = Field(description="characters ÷ 4")
    cpu_hours: float
    wall_hours: float = Field(description="for the cluster's CPUs; fits run one after another on one node")
    fit_seconds: float
    fit_memory_bytes: int = Field(description="the fit's result, held in memory by every worker")
    disk_bytes: int = Field(description="its scores and lineage files")
    fit_buckets: int | None = Field(None, description="tasks a bucketed fit (MinHash, exact dedup, concept clusters) "
                                    "would run as; 1: single-node")
    note: str | None = Field(None, description="a warning, e.g. a fit that would not fit in memory")


class JobPlan(_Open):
    """``POST /jobs?dry_run=true``: the job measured on a sample and extrapolated; nothing ran."""

    input: dict[str, Any]
    cluster: dict[str, Any]
    stages: list[StagePlan]
    total: dict[str, Any]


class ContaminationItem(_Open):
    eval_set: str
    item: str
    ngrams: int = Field(description="the item's distinct n-grams")
    documents: int = Field(description="training documents holding at least one of them")
    best_overlap: float = Field(description="the largest share of the item's n-grams found in one document")


class EvalSetSummary(_Open):
    name: str
    path: str
    items: int
    too_short_items: int = Field(description="items with fewer words than the n-gram: they cannot match")
    ngrams: int
    items_found: int
    documents: int = Field(description="training documents whose best-matching item is in this set")


class ContaminationReport(_Open):
    ngram: int
    index: str
    documents_checked: int
    documents_matched: int
    bloom_false_positive_ngrams: int = Field(description="index hits no eval item holds (discarded)")
    ignored_frequent_ngrams: int
    eval_sets: list[EvalSetSummary]
    items: list[ContaminationItem]


class ContaminationStage(_Open):
    stage: str = Field(description="the stage folder, e.g. 02-decontam_v1")
    action: str
    ready: bool = Field(description="false until the stage has matched every document")
    sha256: str | None = None
    report: ContaminationReport | None = None


class ContaminationReports(_Open):
    job_id: str
    stages: list[ContaminationStage]


class Reselection(_Open):
    kept: int
    dropped: int
    reasons: dict[str, int]
    kept_tokens: int | None = Field(None, description="estimated tokens kept (characters ÷ 4)")


class PreviewResult(_Open):
    stage_index: int
    stage: str
    changed_params: list[str]
    params: dict[str, Any]
    docs_in: int
    before: Reselection
    after: Reselection
    newly_kept: int
    newly_dropped: int
    note: str


class AblationArm(_Open):
    name: str = Field(description="curated, random, or only:<NN>-<stage>")
    kind: str
    stage: str | None
    docs: int
    available_tokens: int
    bits_per_byte: dict[str, Any] = Field(description="mean, sd, ci95 [low, high], n (seeds)")
    delta_vs_random: float | None
    contamination: dict[str, Any] = Field(description="13-gram overlap with the eval set: documents, contaminated, "
                                          "shared_ngrams, eval_docs_hit, removed, flagged")
    runs: list[dict[str, Any]]


class AblationResult(_Open):
    ablation_id: str
    job_id: str | None
    tokens: int
    params: dict[str, Any]
    eval: dict[str, Any]
    arms: list[AblationArm]
    wall_seconds: float | None


class Ablation(_Open):
    ablation_id: str
    job_id: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None = None
    error_code: str | None = None
    ray_submission_id: str | None = None
    result: AblationResult | None = Field(None, description="once succeeded; the plot is at .../plot.png")
