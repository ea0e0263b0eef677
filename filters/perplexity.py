"""``perplexity_v1``: perplexity under a reference language model (CCNet; Ankner et al. 2024).

Score (once per document, the expensive half): negative log-likelihood of the text
under the chosen backend, giving ``perplexity = exp(NLL / tokens)`` and
``bits_per_byte = NLL / ln 2 / bytes`` (tokenizer-independent, so comparable across
models). Every document token is predicted, the first one from the model's BOS token.
Long documents are scored on the first ``window`` tokens (``window_mode: head``) or on
strided windows covering the document (``strided``); lineage records ``tokens``,
``doc_tokens``, ``windows`` and ``truncated`` so a user sees which was used.

Fit (corpus-wide, cheap): the sorted distribution of this job's scores. Select turns
it into cutoffs for the chosen mode, so a new mode or threshold is a re-select:

* ``max_perplexity``: drop above ``max`` (``perplexity.too_high``), optionally below
  ``min`` (``perplexity.too_low``: repeated boilerplate scores very low).
* ``buckets`` (CCNet): head if score < p30, middle if < p60, else tail; cutoffs are
  percentiles of this job's own distribution, or fixed values (CCNet's English
  Wikipedia-LM cutoffs are 340/520, valid only for that model). Buckets not in ``keep``
  drop with ``perplexity.bucket_middle`` / ``perplexity.bucket_tail``.
* ``band`` (Ankner et al.): at keep ratio r keep the lowest r (``low``), the band
  [50−50r, 50+50r] percentile (``medium``) or the highest r (``high``);
  others drop with ``perplexity.outside_band``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from filters.base import (
    FIT,
    ID,
    SCORE,
    TEXT,
    Fitted,
    ModelParams,
    OptionalInputPath,
    ScoreView,
    Selection,
    Stage,
    scores_view,
)
from filters.lm.base import DocScore, Scorer
from filters.lm.models import SMOLLM2, ModelRef, bundled_installed, model_file_list, resolve_model


class _Mode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeepAll(_Mode):
    mode: Literal["none"] = "none"


class MaxPerplexity(_Mode):
    mode: Literal["max_perplexity"]
    max: float = Field(gt=0, description="drop documents scoring above this")
    min: float | None = Field(None, ge=0, description="drop documents scoring below this")


class Buckets(_Mode):
    mode: Literal["buckets"]
    percentiles: tuple[float, float] | None = Field(None, description="head/middle and middle/tail percentiles "
                                                    "of this job's scores (default 30, 60)")
    cutoffs: tuple[float, float] | None = Field(None, description="fixed head/middle and middle/tail scores")
    keep: tuple[Literal["head", "middle", "tail"], ...] = ("head", "middle")

    @model_validator(mode="after")
    def _one_source(self) -> Buckets:
        if self.percentiles is not None and self.cutoffs is not None:
            raise ValueError("give either percentiles or cutoffs, not both")
        pair = self.cutoffs or self.edges
        if not pair[0] <= pair[1]:
            raise ValueError(f"bucket bounds must be ascending, got {list(pair)}")
        if self.percentiles is not None and not all(0 <= p <= 100 for p in self.percentiles):
            raise ValueError("percentiles must lie in [0, 100]")
        return self

    @property
    def edges(self) -> tuple[float, float]:
        return self.percentiles or (30.0, 60.0)  # CCNet's p30/p60


class Band(_Mode):
    mode: Literal["band"]
    band: Literal["low", "medium", "high"] = "medium"
    keep_ratio: float = Field(0.5, gt=0, le=1)


Select = Annotated[KeepAll | MaxPerplexity | Buckets | Band, Field(discriminator="mode")]




class PerplexityParams(ModelParams):
    execution_fields: ClassVar[frozenset[str]] = ModelParams.execution_fields | {"n_threads"}

    # transformers is the CPU default: on the same documents it scored 2.4x the tokens/s of
    # llama.cpp here (bench/bench_perplexity.py); llama.cpp loads in 0.2 s instead of ~4 s.
    backend: Literal["transformers", "llama_cpp", "kenlm"] = "transformers"
    model: ModelRef = Field(SMOLLM2, description="smollm2-135m | gemma3-270m | path to a .gguf, HF folder or "
                            "KenLM model")
    sp_model: OptionalInputPath = Field(None, description="kenlm: SentencePiece model (CCNet's <lang>.sp.model)")
    kenlm_newlines: Literal["space", "lines", "ccnet"] = "space"
    window: int = Field(512, ge=8, le=32768, description="tokens per forward pass (neural backends)")
    window_mode: Literal["head", "strided"] = "head"
    stride: int | None = Field(None, ge=1, description="strided mode: step between windows (default window/2)")
    max_windows: int | None = Field(None, ge=1, description="strided mode: cap on windows per document")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Execution only (with num_actors, cpus_per_actor, num_gpus from ModelParams): never changes a score.
    n_threads: int | None = Field(None, ge=1, description="threads per actor (default: the actor's CPUs)")
    batch_tokens: int = Field(2048, ge=64, description="transformers: tokens per forward batch")
    # Selection.
    score: Literal["perplexity", "bits_per_byte"] = "perplexity"
    min_chars: int = Field(0, ge=0, description="drop shorter documents first (CCNet used 300)")
    select: Select = Field(default_factory=KeepAll)

    @model_validator(mode="after")
    def _check(self) -> PerplexityParams:
        if self.stride is not None and self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window}): tokens would be skipped")
        if self.backend == "kenlm" and self.model == SMOLLM2:
            raise ValueError("the kenlm backend needs model: <path to a KenLM .arpa or .bin>")
        if self.num_gpus and self.backend != "transformers":
            raise ValueError("num_gpus needs backend: transformers")
        return self

    _bundled_installed = field_validator("model")(bundled_installed)


def load_scorer(p: PerplexityParams):
    path = str(resolve_model(p.model))
    if p.backend == "kenlm":
        from filters.lm.ccnet import KenLMScorer

        return KenLMScorer(path, p.sp_model, p.kenlm_newlines)
    stride = p.stride or max(1, p.window // 2)
    threads = p.n_threads or p.cpus_per_actor
    if p.backend == "transformers":
        from filters.lm.hf_backend import TransformersScorer

        return TransformersScorer(path, window=p.window, mode=p.window_mode, stride=stride, max_windows=p.max_windows,
                                  n_threads=threads, batch_tokens=p.batch_tokens, dtype=p.dtype)
    from filters.lm.llama_cpp_backend import LlamaCppScorer

    return LlamaCppScorer(path, window=p.window, mode=p.window_mode, stride=stride, max_windows=p.max_windows,
                          n_threads=threads)


def band_bounds(values: np.ndarray, ids: list[str], select: Band) -> tuple[tuple, tuple] | None:
    """Inclusive ``(score, id)`` bounds of the kept band over the job's sorted distribution.

    Ranks are broken by document id, so ties (e.g. documents whose scored heads are equal)
    cannot push the kept fraction past r ± 1/n, whatever the shard layout."""
    n = len(values)
    k = min(n, max(1, round(select.keep_ratio * n)))
    if not n:
        return None
    start = {"low": 0, "high": n - k, "medium": (n - k) // 2}[select.band]
    return (float(values[start]), ids[start]), (float(values[start + k - 1]), ids[start + k - 1])


def bucket_edges(values: np.ndarray, select: Buckets) -> tuple[float, float]:
    if select.cutoffs is not None:
        return select.cutoffs
    if not len(values):
        return math.inf, math.inf
    # CCNet computes bucket edges with numpy percentiles over the pool's perplexities;
    # equal scores share a bucket, as there.
    lo, hi = np.percentile(values, select.edges)
    return float(lo), float(hi)


_UNSET = object()


class PerplexityV1(Stage[PerplexityParams]):
    name = "perplexity_v1"
    Params = PerplexityParams
    phases = (SCORE, FIT)
    reasons = ("perplexity.empty", "perplexity.too_short", "perplexity.too_high", "perplexity.too_low",
               "perplexity.bucket_head", "perplexity.bucket_middle", "perplexity.bucket_tail",
               "perplexity.outside_band")
    score_params = frozenset({"backend", "model", "sp_model", "kenlm_newlines", "window", "window_mode", "stride",
                              "max_windows", "dtype"})

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self._scorer: Scorer | None = None
        self._dist_source: object = _UNSET
        self._dist: tuple[np.ndarray, list[str]] = (np.array([]), [])

    def load(self) -> None:
        """Load the model now (once per actor) rather than on the first shard."""
        if self._scorer is None:
            self._scorer = load_scorer(self.params)

    def model_files(self) -> list[str]:
        # A transformers folder: hash its weights, config and tokenizer files.
        return model_file_list(self.params.model) + ([self.params.sp_model] if self.params.sp_model else [])

    def score(self, docs: pa.Table) -> pa.Table:
        self.load()
        assert self._scorer is not None  # load() set it
        texts = [t or "" for t in docs[TEXT].to_pylist()]
        results: list[DocScore | None] = self._scorer.score(texts)
        ok = [r is not None for r in results]
        return pa.table({
            "perplexity": pa.array([r.perplexity if r else None for r in results], pa.float64()),
            "bits_per_byte": pa.array([r.bits_per_byte if r else None for r in results], pa.float64()),
            "tokens": pa.array([r.tokens if r else 0 for r in results], pa.int64()),
            "doc_tokens": pa.array([r.doc_tokens if r else 0 for r in results], pa.int64()),
            "windows": pa.array([r.windows if r else 0 for r in results], pa.int32()),
            "truncated": pa.array([bool(r and r.truncated) for r in results], pa.bool_()),
            "empty": pa.array([not o for o in ok], pa.bool_()),
            "chars": pa.array([len(t) for t in texts], pa.int64()),
        })

    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        """This job's score distribution (both scores, length and id), independent of the
        selection params, so any mode or threshold can be cut from it later."""
        return scores_view(view, self.name).read([ID, "perplexity", "bits_per_byte", "chars"])

    def _distribution(self, fitted: pa.Table | None) -> tuple[np.ndarray, list[str]]:
        """Scores and ids of the documents ``select`` ranks (scored, at least ``min_chars``
        long), sorted by (score, id)."""
        p = self.params
        if fitted is not self._dist_source:  # one sort per fit result, not one per shard
            dist: tuple[np.ndarray, list[str]]
            if fitted is None:
                dist = (np.array([]), [])
            else:
                ranked = fitted.filter(pc.and_(pc.greater_equal(fitted["chars"], p.min_chars),
                                               pc.is_finite(fitted[p.score])))
                ranked = ranked.take(pc.sort_indices(ranked, sort_keys=[(p.score, "ascending"), (ID, "ascending")]))
                dist = (ranked[p.score].to_numpy(zero_copy_only=False), ranked[ID].to_pylist())
            self._dist_source, self._dist = fitted, dist
        return self._dist

    def thresholds(self) -> dict[str, list[float]]:
        sel = self.params.select
        if isinstance(sel, MaxPerplexity):
            return {self.params.score: [v for v in (sel.min, sel.max) if v is not None]}
        if isinstance(sel, Buckets) and sel.cutoffs is not None:
            return {self.params.score: list(sel.cutoffs)}
        return {}

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        p, sel = self.params, self.params.select
        values, ids = scores[p.score].to_pylist(), scores[ID].to_pylist()
        eligible = [c >= p.min_chars for c in scores["chars"].to_pylist()]
        dist_values, dist_ids = self._distribution(fitted.table if fitted else None)
        bounds: Any = None  # Band: ((score, id), (score, id)); Buckets: (low, high)
        if isinstance(sel, Band):
            bounds = band_bounds(dist_values, dist_ids, sel)
        elif isinstance(sel, Buckets):
            bounds = bucket_edges(dist_values, sel)
        keep, reason, bucket = [], [], []
        for v, doc_id, ok in zip(values, ids, eligible, strict=True):
            why, b = _decide(v, doc_id, ok, sel, bounds)
            keep.append(why is None)
            reason.append(why)
            bucket.append(b)
        extra = None
        if bounds is not None:
            # The cut itself goes into lineage, so "why" shows the score and the bound it crossed.
            lo, hi = (bounds[0][0], bounds[1][0]) if isinstance(sel, Band) else bounds
            extra = {"cutoff_low": [_finite(lo)] * len(values), "cutoff_high": [_finite(hi)] * len(values)}
            if isinstance(sel, Buckets):
                extra["bucket"] = bucket
        return Selection(keep=keep, reason=reason, extra_scores=extra)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _decide(v: float | None, doc_id: str, long_enough: bool, sel, bounds) -> tuple[str | None, float | None]:
    if v is None:
        return "perplexity.empty", None
    if not long_enough:
        return "perplexity.too_short", None
    if isinstance(sel, MaxPerplexity):
        if v > sel.max:
            return "perplexity.too_high", None
        if sel.min is not None and v < sel.min:
            return "perplexity.too_low", None
        return None, None
    if isinstance(sel, Band):
        inside = bounds is not None and bounds[0] <= (v, doc_id) <= bounds[1]
        return (None if inside else "perplexity.outside_band"), None
    if isinstance(sel, Buckets):
        lo, hi = bounds
        name, b = ("head", 0.0) if v < lo else ("middle", 1.0) if v < hi else ("tail", 2.0)
        return (None if name in sel.keep else f"perplexity.bucket_{name}"), b
    return None, None
