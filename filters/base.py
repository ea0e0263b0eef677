"""The stage contract (v2) shared by every stage. Pure: no Ray, DuckDB or FastAPI here.

Two kinds of stage, one contract:

* **Filter stages** decide keep/drop per document, in two halves as in Dolma's taggers +
  mixer. ``score(docs)`` is the expensive half (hashing, model calls): named scores per
  document, no decisions. ``select(scores, fitted)`` is the cheap half: keep/drop and a
  stable ``<family>.<reason>`` string per document. Scores are stored, so a new
  threshold is a re-select, never a re-score.
* **Transform stages** turn documents into documents: ``transform(docs, fitted)``
  keeps, edits or drops each input (with a reason) and may create new documents, each
  with a deterministic id and a ``parent_id``.

Between the halves a stage may run **corpus-wide fits**. A stage lists its steps in
``phases``: per-document scoring phases and fits, in order; ``select`` (or
``transform``) always comes last. A fit gets a lazy, out-of-core view of the scores of
the scoring phase before it (every document that reached the stage) and a folder for
artifacts; its result (a table and/or files such as a trained model) is handed to the
next scoring phase and to ``select``:

    (SCORE,)                       per document: rules, perplexity with fixed thresholds
    (SCORE, FIT)                   corpus-wide: dedup groups, percentile cutoffs, clusters
    (Phase.score("sample"), Phase.fit("train"), SCORE)   train → score → select

Scoring phases and ``select`` see one unit of documents at a time (any number of units
run in parallel); fits see every document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

ID = "id"
TEXT = "text"
PARENT_ID = "parent_id"
# A document's place in the job's input order, unique in the job and handed to fits (with
# the scores) so survivors are chosen by a rule that does not depend on worker count,
# unit size or scheduling. Documents a transform creates come right after their source.
ORDER = "order"
# Facts about a document that are not numbers (a synthetic document's style, model, finish
# reason), as a JSON object: recorded in lineage and carried into outputs.
DETAIL = "detail"
# Set (true) on the documents a rescuing stage gets from an earlier stage's drops.
RESCUED = "rescued"


# -- parameters ----------------------------------------------------------------------------

class StageParams(BaseModel):
    """Base for stage parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields that only say *how* to run (actors, threads). They never change a score, so
    # they are left out of the spec hash: changing them never makes a job folder refuse
    # the spec, and never rescores.
    execution_fields: ClassVar[frozenset[str]] = frozenset()


class ModelParams(StageParams):
    """Base for stages that load a model: their scoring runs on a pool of long-lived Ray
    actors (one model each), and each such stage gets its own pool."""

    num_actors: int | None = Field(None, ge=1, description="scoring actors (default: cluster CPUs / cpus_per_actor)")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs (threads) each actor reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor")

    execution_fields: ClassVar[frozenset[str]] = frozenset({"num_actors", "cpus_per_actor", "num_gpus"})


@dataclass(frozen=True)
class PathRef:
    """Marks a params field as a file the job reads (a model, a calibration set). Every such
    field is confined by the service exactly like ``inputs`` and made absolute before a job
    runs; declare it as ``InputPath`` / ``OptionalInputPath`` and every stage inherits that.
    ``names`` are values that are not paths (e.g. bundled model names)."""

    names: tuple[str, ...] = ()


# Parsing never touches these paths (the API must not open or probe a path before it is
# confined); ``workers.spec.resolve_paths`` checks and resolves them afterwards.
InputPath = Annotated[str, Field(min_length=1), PathRef()]
OptionalInputPath = Annotated[str | None, Field(min_length=1), PathRef()]


def path_fields(params: BaseModel, prefix: tuple = ()) -> Iterator[tuple[tuple, str, PathRef]]:
    """Every (location, value, PathRef) of a params model, nested models and lists included."""
    for name, info in type(params).model_fields.items():
        value = getattr(params, name)
        ref = next((m for m in info.metadata if isinstance(m, PathRef)), None)
        if ref is not None:
            if isinstance(value, list | tuple):
                for i, v in enumerate(value):
                    yield (*prefix, name, i), v, ref
            elif value is not None:
                yield (*prefix, name), value, ref
        elif isinstance(value, BaseModel):
            yield from path_fields(value, (*prefix, name))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                if isinstance(v, BaseModel):
                    yield from path_fields(v, (*prefix, name, i))


# -- phases and what fits get --------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One step of a stage before its select/transform: ``kind`` says how it runs, ``method``
    names the stage method that implements it."""

    kind: Literal["score", "fit"]
    method: str

    @classmethod
    def score(cls, method: str = "score") -> Phase:
        return cls("score", method)

    @classmethod
    def fit(cls, method: str = "fit") -> Phase:
        return cls("fit", method)


SCORE = Phase.score()
FIT = Phase.fit()


def sql_list(paths: list[Path]) -> str:
    """Paths as a DuckDB list literal (for ``read_parquet``), quotes escaped."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


class SqlEngine(Protocol):
    """A private DuckDB connection; large intermediate results spill to disk."""

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run a query (DuckDB dialect)."""
        ...

    def execute(self, statement: str, params: list[Any] | None = None) -> None:
        """Run a statement (e.g. ``CREATE TEMP TABLE``) in the same engine."""
        ...

    def register(self, name: str, table: pa.Table) -> None:
        """Make an in-memory Arrow table queryable as ``name``."""
        ...

    def stream(self, query: str, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Run a query and read its result a batch at a time (a sorted result larger than
        memory spills, so only a batch is held here)."""
        ...


class OverBudget(ValueError):
    """A per-bucket step would hold more than its task's memory budget: ``need`` bytes for
    ``what`` (the worker layer names the setting to change)."""

    def __init__(self, what: str, need: int) -> None:
        super().__init__(f"{what} needs ~{need / 2**20:,.1f} MiB")
        self.what, self.need = what, need


@dataclass(frozen=True)
class Bucketed:
    """What the per-bucket tasks of a bucketed fit wrote (see ``Stage.bucket_by``):
    Parquet files of verified edges (``a``, ``b``: document orders, ``sim``) and of the
    rows of every document in a candidate pair (``ord`` and ``Stage.bucket_columns``, once
    per bucket whose pairs hold it: read them with ``DISTINCT ON (ord)``). A regrouped fit
    (``Stage.regroup_fit``) gets only ``groups``: each bucket's ``regroup_bucket`` result."""

    edges: list[Path] = field(default_factory=list)
    ends: list[Path] = field(default_factory=list)
    groups: list[Path] = field(default_factory=list)


class ScoreView(SqlEngine, Protocol):
    """The scores of one scoring phase for every document that reached the stage, out of
    core (the worker layer builds it over the stored score files). Columns: ``id``,
    ``order``, ``row`` and the phase's scores. ``bucketed``: set when the job ran the
    stage's grouping as per-bucket tasks (``Stage.bucket_by``, ``Stage.regroup_fit``), None
    otherwise. ``sql`` runs a
    query (DuckDB dialect) where the table ``scores`` is this view."""

    bucketed: Bucketed | None

    @property
    def num_rows(self) -> int: ...

    @property
    def columns(self) -> list[str]: ...

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Materialise some columns in memory (fine for a few numbers per document)."""
        ...

    def batches(self, columns: list[str] | None = None, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Stream the scores in input order, a batch at a time."""
        ...

    def stage_scores(self, stage: str) -> str:
        """The SQL name of an earlier stage's scores in this job (columns ``id`` + its
        scores); ``ValueError`` if that stage is not in the job or has not scored yet."""
        ...


@dataclass(frozen=True)
class Fitted:
    """What a fit produced: the table it returned and the folder of files it wrote."""

    table: pa.Table | None
    artifacts: Path | None = None


# -- what the final step returns -----------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What ``select`` returns, one entry per scored document, in input order."""

    keep: list[bool]
    reason: list[str | None]
    cluster_id: list[str | None] | None = None
    survivor_id: list[str | None] | None = None
    # Extra numeric facts known only after a fit (e.g. a duplicate group's size).
    extra_scores: dict[str, list[float | None]] | None = None

    def __post_init__(self) -> None:
        n = len(self.keep)
        for name in ("reason", "cluster_id", "survivor_id"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"Selection.{name} has {len(values)} entries, keep has {n}")
        for name, values in (self.extra_scores or {}).items():
            if len(values) != n:
                raise ValueError(f"Selection.extra_scores[{name!r}] has {len(values)} entries, keep has {n}")


KEEP, EDIT, DROP = "keep", "edit", "drop"


@dataclass(frozen=True)
class NewDoc:
    """A document a transform creates from input ``parent`` (its index in the docs the
    transform got). ``variant`` is unique among one parent's new documents; with the
    parent's id and the stage name it makes the new id, so reruns give the same ids.

    ``scores`` (numbers) and ``detail`` (JSON-able facts) go into its lineage row, and
    ``detail`` into the outputs. A ``reason`` records an attempt that failed (e.g. a
    rejected generation): the document is in lineage as dropped with that reason and
    never enters the new version."""

    parent: int
    variant: str
    text: str
    scores: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class Transformed:
    """What ``transform`` returns for n input documents.

    ``action[i]``: ``keep`` (unchanged), ``edit`` (``text[i]`` replaces its text, same id)
    or ``drop`` (``reason[i]`` says why; required). ``created`` are new documents; in the
    new version each follows its parent. ``scores`` (n rows) go into lineage. ``stats``
    are counters of the whole call (e.g. tokens generated, cache hits): summed per stage
    into the job's funnel. ``detail`` (n entries, JSON-able dicts or None) are facts about an
    input that are not numbers (what matched, which spans were cut): recorded in its
    lineage row at this stage, not carried into outputs."""

    action: list[str]
    text: list[str | None]
    reason: list[str | None]
    scores: pa.Table | None = None
    created: tuple[NewDoc, ...] = field(default_factory=tuple)
    stats: dict[str, float] = field(default_factory=dict)
    detail: list[dict[str, Any] | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.action)
        if len(self.text) != n or len(self.reason) != n:
            raise ValueError(f"Transformed: action has {n} entries, text {len(self.text)}, reason {len(self.reason)}")
        if self.detail is not None and len(self.detail) != n:
            raise ValueError(f"Transformed.detail has {len(self.detail)} entries for {n} documents")
        if self.scores is not None and self.scores.num_rows != n:
            raise ValueError(f"Transformed.scores has {self.scores.num_rows} rows for {n} documents")
        for i, (a, t, r) in enumerate(zip(self.action, self.text, self.reason, strict=True)):
            if a not in (KEEP, EDIT, DROP):
                raise ValueError(f"Transformed.action[{i}] is {a!r}; expected keep, edit or drop")
            if a == EDIT and t is None:
                raise ValueError(f"Transformed.action[{i}] is edit but text[{i}] is None")
            if a == DROP and not r:
                raise ValueError(f"Transformed.action[{i}] is drop without a reason")
        seen = set()
        for d in self.created:
            if not 0 <= d.parent < n:
                raise ValueError(f"NewDoc.parent {d.parent} is not an input index (0..{n - 1})")
            if (d.parent, d.variant) in seen:
                raise ValueError(f"two new documents of input {d.parent} share the variant {d.variant!r}")
            seen.add((d.parent, d.variant))


# -- the stage -----------------------------------------------------------------------------

P = TypeVar("P", bound=StageParams)


def scores_view(view: ScoreView | None, stage: str) -> ScoreView:
    """The view a fit needs (it is None only for a fit with no scoring phase before it)."""
    if view is None:
        raise ValueError(f"{stage}: its fit needs the scores of a scoring phase before it")
    return view


class Stage(Generic[P]):
    """Subclass, set ``name``/``Params``/``reasons``, implement ``score`` and ``select``
    (and ``fit`` when ``phases`` has one); for a transform, subclass ``TransformStage``.
    ``Stage[MyParams]`` types ``self.params``."""

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    kind: ClassVar[Literal["filter", "transform"]] = "filter"
    phases: ClassVar[tuple[Phase, ...]] = (SCORE,)
    # Every reason string this stage can emit; tests and the API list them.
    reasons: ClassVar[tuple[str, ...]] = ()
    # Params that change a scoring phase itself; all others only change ``select``, so a
    # new value for them is a re-select over stored scores.
    score_params: ClassVar[frozenset[str]] = frozenset()
    # Params the corpus-wide fit reads (dedup groups and survivors depend on them): a new
    # value needs the fit again, so a re-select over the stored fit refuses it.
    fit_params: ClassVar[frozenset[str]] = frozenset()
    # Transforms that create documents give outputs ``parent_id`` and ``detail`` columns.
    creates_documents: ClassVar[bool] = False
    # True when what a stage removes depends on pairs of documents (duplicates): a sample
    # holds both copies of few pairs, so a plan made on one undercounts the removals.
    sample_undercounts: ClassVar[bool] = False
    # The score column the fit groups documents by (MinHash band keys, an exact-dedup hash).
    # A job may then hash its keys into buckets in the scoring pass (``bucket_keys``) and run
    # the grouping and the verification of pairs as one task per bucket (``bucket_pairs``,
    # ``verify_bucket``), handing the fit their edges as ``view.bucketed``; the result must
    # not change.
    bucket_by: ClassVar[str | None] = None
    # Score columns ``verify_bucket`` reads for each document in a candidate pair.
    bucket_columns: ClassVar[tuple[str, ...]] = ()
    # A fit whose grouping key only an earlier fit makes (concept clusters: the centroids
    # the ``train`` fit wrote). Before the fit named here the job runs one task per unit
    # (``regroup_keys``: each document's key row, hashed into buckets) and one per bucket
    # (``regroup_bucket``), and hands the fit their results as ``view.bucketed.groups``;
    # the result must not depend on the number of buckets (one bucket: the single-node fit).
    regroup_fit: ClassVar[str | None] = None
    # A folder of this stage in the job folder, kept across reruns of the job (a cache of
    # paid model calls, a budget ledger); set by the runner, None outside a job.
    workspace: Path | None = None

    def __init__(self, params: StageParams | dict | None = None) -> None:
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params: P = cast(P, params)

    @classmethod
    def uses_model(cls) -> bool:
        """Model stages score on their own pool of actors that load the model once."""
        return issubclass(cls.Params, ModelParams)

    @classmethod
    def check_in_job(cls, params: StageParams, stages_before: list[str]) -> None:
        """Raise ValueError if ``params`` cannot work after ``stages_before`` (checked when
        the spec is parsed, e.g. a score of an earlier stage that the stage reads)."""

    @classmethod
    def rescues(cls, params: StageParams) -> str | None:
        """A reason of an earlier stage: besides the documents that survive to it, a
        transform then also gets those the latest earlier stage emitting that reason
        dropped with it, marked by a true ``rescued`` column (e.g. to rephrase low-quality
        documents instead of losing them). None (the default): only survivors."""
        return None

    @classmethod
    def corpus_wide(cls) -> bool:
        return any(p.kind == "fit" for p in cls.phases)

    def score(self, docs: pa.Table) -> pa.Table:
        """``docs`` has columns ``id`` and ``text``; return one row of scores per doc. A
        scoring phase after a fit is called as ``method(docs, fitted)``."""
        raise NotImplementedError

    def fit(self, scores: ScoreView | None, artifacts: Path) -> pa.Table | None:
        """Corpus-wide step over the scores of every document; files written under
        ``artifacts`` are hashed and recorded with the job."""
        return None

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        raise NotImplementedError

    def keys_per_doc(self) -> int:
        """How many ``bucket_by`` keys a document has at most (sizes the buckets)."""
        return 1

    def bucket_keys(self, scores: pa.Table) -> pa.Table:
        """One unit's key rows for a bucketed fit, from its scores (``order`` and the score
        columns): ``ord`` (the document's order), ``hash`` (uint64; its high 32 bits pick the
        bucket, so equal keys must have equal hashes) and the columns ``bucket_pairs`` reads."""
        raise NotImplementedError

    def bucket_doc_bytes(self) -> int | None:
        """Bytes one document's key rows take in a bucket task (sizes the buckets); None:
        the worker layer's estimate for a key row times ``keys_per_doc``."""
        return None

    def regroup_keys(self, scores: pa.Table, artifacts: Path) -> pa.Table:
        """One unit's key rows for a regrouped fit, from its scores and what the earlier
        fits wrote under ``artifacts``: ``ord``, ``hash`` (as in ``bucket_keys``) and the
        columns ``regroup_bucket`` reads; a document without a key has no row."""
        raise NotImplementedError

    def regroup_bucket(self, sql: SqlEngine, rows: str, memory_bytes: int) -> pa.Table:
        """One bucket's part of the fit from its key rows (the query ``rows``: as
        ``regroup_keys`` made them, less ``hash``); raise ``OverBudget`` rather than hold
        more than ``memory_bytes`` in Python."""
        raise NotImplementedError

    def bucket_pairs(self, sql: SqlEngine, keys: str) -> pa.Table:
        """Candidate pairs (``a``, ``b``: orders, a < b) of one bucket, whose key rows (as
        ``bucket_keys`` made them, less ``hash``) the query ``keys`` gives."""
        raise NotImplementedError

    def verify_bucket(self, sql: SqlEngine, pairs: str, ends: str | None) -> pa.Table:
        """Edges (``a``, ``b``, ``sim``) among the pairs of the table ``pairs``, reading the
        endpoints' ``bucket_columns`` from the query ``ends`` (``ord`` and those columns;
        None for a stage without ``bucket_columns``)."""
        raise NotImplementedError

    def transform(self, docs: pa.Table, fitted: Fitted | None) -> Transformed:
        raise NotImplementedError

    def thresholds(self) -> dict[str, list[float]]:
        """Where ``select`` cuts each score under the current params (score name → values),
        drawn on the dashboard's histograms; {} for a cut that is not a fixed value of one
        score (percentiles, budgets, duplicate groups)."""
        return {}

    def load(self) -> None:
        """Load any model now (called once per actor); stages without one do nothing."""

    def preflight(self) -> None:
        """Check the files this stage's params name (an index it deduplicates against) when
        a job starts, before any document is read; raise ValueError naming the param."""

    def model_files(self) -> list[str]:
        """Paths of model files this stage loads; their hashes are recorded with the job."""
        return []


class TransformStage(Stage[P]):
    """Docs in → docs out: implement ``transform``. No scoring phases unless declared."""

    kind: ClassVar[Literal["filter", "transform"]] = "transform"
    phases: ClassVar[tuple[Phase, ...]] = ()
