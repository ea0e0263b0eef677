"""``preselect_v1``: PreSelect predictive-strength scoring (Shum et al. 2025; methods.md §3).

Keeps the documents whose losses across a family of models rank those models the way
their benchmark scores do, through a fastText classifier trained to recognise them, so
the whole corpus is scored at fastText speed. On the stage contract v2:

1. ``draw`` (per unit): a seeded hash key per non-empty document.
2. ``choose`` (fit): the calibration sample, the ``sample`` smallest keys (deterministic
   whatever the units or workers).
3. ``calibrate`` (per unit, on the actor pool): bits per character of each sampled
   document under every family model, and its predictive strength S.
4. ``train`` (fit): labels (S = 1 positive; as many lowest-S negatives) and fastText
   ``train_supervised(epoch=3, lr=0.1, wordNgrams=2)``; the ``.bin`` is an artifact.
5. ``score`` (per unit): P(``__label__1``) for every document, batched.
6. ``fit``: the job's score distribution; ``select`` cuts a character budget (default 10%
   of all characters), a threshold or a top fraction from it, so a new cut is a re-select.

``scorer: <.bin>`` skips 1–4 (the classifier of an earlier job, or the released one);
``calibration_data: <file>`` calibrates on a separate dataset (scored in the fit, not on
the pool); ``calibration_only: true`` stops after 4 and keeps every document.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters.base import (
    ID,
    ORDER,
    TEXT,
    Fitted,
    ModelParams,
    OptionalInputPath,
    PathRef,
    Phase,
    ScoreView,
    Selection,
    Stage,
    scores_view,
)
from filters.lm.family import (
    BUNDLED_FAMILY,
    FamilyMember,
    bpc_matrix,
    check_members,
    member_files,
    member_scorer,
    read_family,
)
from filters.preselect_method import (
    POSITIVE,
    balanced_labels,
    fasttext_text,
    keep_by_char_budget,
    predictive_strength,
    training_lines,
)

MODEL_FILE = "preselect.bin"
REPORT_FILE = "calibration.json"
SCORE_COLUMN = "preselect_score"
DEFAULT_WINDOW = 255


class _Mode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Mode):
    mode: Literal["budget"] = "budget"
    fraction: float = Field(0.10, gt=0, le=1, description="keep the best documents up to this share of all characters")


class Threshold(_Mode):
    mode: Literal["threshold"]
    min_score: float = Field(ge=0, le=1, description="keep documents with P(__label__1) at least this")


class TopFraction(_Mode):
    mode: Literal["top_fraction"]
    fraction: float = Field(gt=0, le=1, description="keep this share of the documents, best first")


Select = Annotated[Budget | Threshold | TopFraction, Field(discriminator="mode")]
FamilyRef = Annotated[str, Field(min_length=1), PathRef(names=(BUNDLED_FAMILY,))]


class PreselectParams(ModelParams):
    execution_fields: ClassVar[frozenset[str]] = ModelParams.execution_fields | {"n_threads"}

    family: FamilyRef = Field(BUNDLED_FAMILY, description="the bundled family's name or a folder with family.json")
    models: list[FamilyMember] | None = Field(None, min_length=2, description="an inline family instead of `family`")
    sample: int = Field(2000, ge=2, description="calibration documents drawn from the job's input")
    seed: int = 0
    calibration_data: OptionalInputPath = Field(None, description="calibrate on this JSONL/Parquet file instead")
    calibration_text_field: str = "text"
    window: int | None = Field(None, ge=8, description="tokens per forward pass, the same for every family model "
                                                      "(default: the window the family was benchmarked with, else 255)")
    max_chars: int = Field(2000, ge=100, description="characters of each calibration document the family scores")
    min_per_class: int = Field(20, ge=1, description="fewest positives and negatives the classifier trains on")
    epoch: int = Field(3, ge=1)
    lr: float = Field(0.1, gt=0)
    word_ngrams: int = Field(2, ge=1)
    # fastText's own defaults. Scoring speed is bound by random reads of the dim × bucket
    # input matrix (870 MB at the defaults); dim 10 scores ~2.5× faster (bench/RESULTS.md).
    dim: int = Field(100, ge=1, description="fastText vector size")
    bucket: int = Field(2_000_000, ge=1, description="fastText hash buckets for word n-grams")
    scorer: OptionalInputPath = Field(None, description="an existing fastText .bin: skip calibration and training")
    calibration_only: bool = Field(False, description="train and publish the classifier, keep every document")
    n_threads: int | None = Field(None, ge=1, description="threads per actor (default: the actor's CPUs)")
    select: Select = Field(default_factory=lambda: Budget(mode="budget", fraction=0.10))

    @model_validator(mode="after")
    def _check(self) -> PreselectParams:
        if self.models is not None:
            if self.family != BUNDLED_FAMILY:
                raise ValueError("give either family (a folder or the bundled name) or models (inline), not both")
            check_members(list(self.models), "models")
        if self.scorer is not None and (self.calibration_only or self.calibration_data is not None):
            raise ValueError("scorer uses an existing classifier: calibration_only and calibration_data do not apply")
        return self


def _sample_key(seed: int, doc_id: str) -> str:
    # Fixed-width hex sorts like the number, and as text it stays out of lineage's scores.
    return xxhash.xxh3_64_hexdigest(f"{seed}\0{doc_id}".encode())


class PreselectV1(Stage[PreselectParams]):
    name = "preselect_v1"
    Params = PreselectParams
    phases = (Phase.score("draw"), Phase.fit("choose"), Phase.score("calibrate"), Phase.fit("train"),
              Phase.score("score"), Phase.fit("fit"))
    reasons = ("preselect.empty", "preselect.below_budget", "preselect.below_threshold",
               "preselect.below_top_fraction")
    score_params = frozenset(set(PreselectParams.model_fields) - PreselectParams.execution_fields - {"select"})

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self._members: list[FamilyMember] | None = None
        self._family_window: int | None = None
        self._scorers: list | None = None
        self._classifier = None
        self._classifier_path: str | None = None
        self._cut_source: object = None
        self._cut: dict | None = None
        self._labels_source: object = None
        self._labels_by_id: dict = {}

    # -- the family and the classifier ------------------------------------------------------
    def members(self) -> list[FamilyMember]:
        if self._members is None:
            p = self.params
            if p.models is not None:
                self._members, self._family_window = list(p.models), None
            else:
                members, meta = read_family(p.family)
                self._members, self._family_window = members, meta.get("scoring", {}).get("window")
        return self._members

    def window(self) -> int:
        """The scoring window: the spec's, else the one the family's benchmark scores used
        (a family of short-context models needs its own), else 255."""
        self.members()
        return self.params.window or self._family_window or DEFAULT_WINDOW

    def _family_scorers(self) -> list:
        if self._scorers is None:
            threads = self.params.n_threads or self.params.cpus_per_actor
            self._scorers = [member_scorer(m, self.window(), threads) for m in self.members()]
        return self._scorers

    def family_bpc(self, texts: list[str]) -> np.ndarray:
        return bpc_matrix(self._family_scorers(), texts, self.params.max_chars)

    def _load_classifier(self, path: str):
        if self._classifier_path != path:
            import fasttext

            self._classifier, self._classifier_path = fasttext.load_model(path), path
        return self._classifier

    def model_files(self) -> list[str]:
        if self.params.scorer is not None:
            return [self.params.scorer]
        return [f for m in self.members() for f in member_files(m)]

    def _calibrates_on_input(self) -> bool:
        return self.params.scorer is None and self.params.calibration_data is None

    # -- 1, 2: the calibration sample ---------------------------------------------------------
    def draw(self, docs: pa.Table) -> pa.Table:
        ids, texts = docs[ID].to_pylist(), docs[TEXT].to_pylist()
        on = self._calibrates_on_input()
        keys = [_sample_key(self.params.seed, i) if on and t and t.strip() else None for i, t in zip(ids, texts,
                                                                                                   strict=True)]
        return pa.table({"sample_key": pa.array(keys, pa.string())})

    def choose(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        return scores_view(view, self.name).sql(
            'SELECT id FROM scores WHERE sample_key IS NOT NULL ORDER BY sample_key, "order" LIMIT ?',
            [self.params.sample])

    # -- 3: losses under the family -------------------------------------------------------------
    def calibrate(self, docs: pa.Table, fitted: Fitted) -> pa.Table:
        chosen = set(fitted.table[ID].to_pylist()) if fitted.table is not None else set()
        ids, texts = docs[ID].to_pylist(), docs[TEXT].to_pylist()
        picked = [k for k, i in enumerate(ids) if i in chosen]
        names = [m.name for m in self.members()]
        bpc = np.full((len(ids), len(names)), np.nan)
        strength = np.full(len(ids), np.nan)
        if picked:
            bpc[picked] = self.family_bpc([texts[k] for k in picked])
            ok = [k for k in picked if np.isfinite(bpc[k]).all()]
            if ok:
                strength[ok] = predictive_strength(bpc[ok], [m.benchmark_score for m in self.members()])
        in_sample = np.zeros(len(ids), dtype=bool)
        in_sample[picked] = True
        columns = {"calibration": pa.array(in_sample, pa.bool_()),
                   "strength": pa.array(strength, pa.float64(), from_pandas=True)}
        for j, name in enumerate(names):
            columns[f"bpc.{name}"] = pa.array(bpc[:, j], pa.float64(), from_pandas=True)
        # The texts the fit trains fastText on (score files only; lineage keeps numbers).
        columns["calibration_text"] = pa.array([texts[k] if np.isfinite(strength[k]) else None
                                                for k in range(len(ids))], pa.string())
        return pa.table(columns)

    # -- 4: labels and fastText -------------------------------------------------------------------
    def train(self, view: ScoreView | None, artifacts: Path) -> pa.Table | None:
        p = self.params
        if p.scorer is not None:
            return None
        if p.calibration_data is not None:
            texts = _read_calibration(p.calibration_data, p.calibration_text_field)
            bpc = self.family_bpc(texts)
            ok = np.isfinite(bpc).all(axis=1)
            texts, ids = [t for t, g in zip(texts, ok, strict=True) if g], [None] * int(ok.sum())
            strength = predictive_strength(bpc[ok], [m.benchmark_score for m in self.members()])
        else:
            rows = scores_view(view, self.name).sql(
                'SELECT id, strength, calibration_text FROM scores WHERE strength IS NOT NULL ORDER BY "order"')
            ids, texts = rows[ID].to_pylist(), rows["calibration_text"].to_pylist()
            strength = rows["strength"].to_numpy(zero_copy_only=False)
        positives, negatives = balanced_labels(strength, p.min_per_class)
        classifier_path = artifacts / MODEL_FILE
        _train_fasttext(training_lines(texts, positives, negatives), classifier_path, p)
        label = np.full(len(texts), np.nan)
        label[positives], label[negatives] = 1.0, 0.0
        hist, _ = np.histogram(strength, bins=10, range=(0.0, 1.0))
        report = {"calibration_documents": len(texts), "positives": len(positives), "negatives": len(negatives),
                  "strength_histogram": {"bins": [round(b / 10, 1) for b in range(11)], "counts": hist.tolist()},
                  "strength_exactly_1": int((strength >= 1).sum()),
                  "family": [m.model_dump(mode="json") for m in self.members()],
                  "source": p.calibration_data or "the job's input"}
        _write_text(artifacts / REPORT_FILE, json.dumps(report, indent=1) + "\n")
        return pa.table({ID: pa.array(ids, pa.string()), "strength": pa.array(strength, pa.float64()),
                         "label": pa.array(label, pa.float64(), from_pandas=True)})

    # -- 5: every document -----------------------------------------------------------------------
    def score(self, docs: pa.Table, fitted: Fitted | None = None) -> pa.Table:
        column = docs[TEXT]
        n = len(column)
        labels = self._labels(fitted)
        label_col = (pa.array([labels.get(i) for i in docs[ID].to_pylist()], pa.float64()) if labels
                     else pa.nulls(n, pa.float64()))
        # Arrow computes the lengths; to_numpy builds the Python strings faster than to_pylist
        # (at ~100k documents/s either would be a visible share of the time).
        chars = pc.fill_null(pc.utf8_length(column), 0).cast(pa.int64())
        texts = column.to_numpy(zero_copy_only=False).tolist()
        if self.params.calibration_only:
            return pa.table({SCORE_COLUMN: pa.nulls(n, pa.float64()), "chars": chars, "calibration_label": label_col})
        model = self._load_classifier(self._classifier_file(fitted))
        scores = predict_positive(model, texts)
        return pa.table({SCORE_COLUMN: pa.array(scores, pa.float64(), from_pandas=True), "chars": chars,
                         "calibration_label": label_col})

    def _classifier_file(self, fitted: Fitted | None) -> str:
        if self.params.scorer is not None:
            return self.params.scorer
        if fitted is None or fitted.artifacts is None or not (fitted.artifacts / MODEL_FILE).exists():
            raise RuntimeError(f"{self.name}: the train fit left no {MODEL_FILE}")
        return str(fitted.artifacts / MODEL_FILE)

    def _labels(self, fitted: Fitted | None) -> dict:
        """The calibration label by document id, built once per fit (not per unit)."""
        table = fitted.table if fitted is not None else None
        if table is not self._labels_source:
            self._labels_source, self._labels_by_id = table, {}
            if table is not None and ID in table.column_names:
                self._labels_by_id = {i: v for i, v in zip(table[ID].to_pylist(), table["label"].to_pylist(),
                                                          strict=True) if i is not None and v is not None}
        return self._labels_by_id

    # -- 6: the cut -------------------------------------------------------------------------------
    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        return scores_view(view, self.name).sql(f'SELECT id, "order", {SCORE_COLUMN}, chars FROM scores '
                                                'ORDER BY "order"')

    def _cut_point(self, fitted: pa.Table | None) -> dict:
        """The last kept (score, order) for budget and top-fraction cuts, once per fit."""
        if fitted is not self._cut_source:
            sel, cut = self.params.select, None
            if fitted is not None and not isinstance(sel, Threshold):
                scored = fitted.filter(pc.is_valid(fitted[SCORE_COLUMN]))
                scores = scored[SCORE_COLUMN].to_numpy(zero_copy_only=False)
                orders = scored[ORDER].to_numpy(zero_copy_only=False)
                if len(scores):
                    if isinstance(sel, Budget):
                        # The budget is a share of the scored documents' characters (an
                        # unscored document is empty or whitespace: it holds next to none).
                        lengths = scored["chars"].to_numpy(zero_copy_only=False)
                        keep = keep_by_char_budget(scores, lengths, sel.fraction)
                    else:
                        keep = np.zeros(len(scores), bool)
                        rank = np.lexsort((orders, -scores))
                        keep[rank[: max(1, round(sel.fraction * len(scores)))]] = True
                    last = np.lexsort((orders[keep], -scores[keep]))[-1]
                    cut = (float(scores[keep][last]), int(orders[keep][last]))
            self._cut_source, self._cut = fitted, {"cut": cut}
        return self._cut or {}

    def thresholds(self) -> dict[str, list[float]]:
        sel = self.params.select
        return {SCORE_COLUMN: [sel.min_score]} if isinstance(sel, Threshold) else {}

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        sel = self.params.select
        values, orders = scores[SCORE_COLUMN].to_pylist(), scores[ORDER].to_pylist()
        n = len(values)
        if self.params.calibration_only:
            return Selection(keep=[True] * n, reason=[None] * n)
        cut = None if isinstance(sel, Threshold) else self._cut_point(fitted.table if fitted else None)["cut"]
        keep: list[bool] = []
        reason: list[str | None] = []
        why: str | None
        why_low = {"budget": "preselect.below_budget", "threshold": "preselect.below_threshold",
                   "top_fraction": "preselect.below_top_fraction"}[sel.mode]
        for v, o in zip(values, orders, strict=True):
            if v is None:
                ok, why = False, "preselect.empty"
            elif isinstance(sel, Threshold):
                ok = v >= sel.min_score
                why = None if ok else why_low
            else:
                ok = cut is not None and (v > cut[0] or (v == cut[0] and o <= cut[1]))
                why = None if ok else why_low
            keep.append(ok)
            reason.append(why)
        bound = sel.min_score if isinstance(sel, Threshold) else (cut[0] if cut else None)
        return Selection(keep=keep, reason=reason, extra_scores={"cutoff": [bound] * n})


def predict_positive(model, texts: list[str | None]) -> list[float | None]:
    """P(__label__1) per text, one batched ``predict(k=-1)``; None for an empty or null text."""
    cleaned = [fasttext_text(t) if t else "" for t in texts]
    present = [k for k, line in enumerate(cleaned) if line and not line.isspace()]
    lines = cleaned if len(present) == len(cleaned) else [cleaned[k] for k in present]
    out: list[float | None] = [None] * len(texts)
    if not lines:
        return out
    labels, probs = model.predict(lines, k=-1)
    if len(model.labels) == 2 and POSITIVE in model.labels:
        # Two labels (the classifier this stage trains): P(1) is the first probability when
        # the first label is positive, else the second; no dict per document.
        for k, lab, pr in zip(present, labels, probs, strict=True):
            p = float(pr[0] if lab[0] == POSITIVE else pr[1])
            out[k] = p if p < 1.0 else 1.0  # fastText's softmax can round past 1
        return out
    for k, lab, pr in zip(present, labels, probs, strict=True):  # k=-1: every label is listed
        out[k] = min(1.0, float(pr[lab.index(POSITIVE)])) if POSITIVE in lab else 0.0
    return out


def _train_fasttext(lines, target: Path, p: PreselectParams) -> None:
    import fasttext

    fd, train_path = tempfile.mkstemp(prefix=".train-", suffix=".txt", dir=target.parent)
    tmp_model = target.with_name(f".{target.name}.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        # One thread: fastText's Hogwild updates make multi-thread training irreproducible.
        model = fasttext.train_supervised(input=train_path, epoch=p.epoch, lr=p.lr, wordNgrams=p.word_ngrams,
                                          dim=p.dim, bucket=p.bucket, thread=1, seed=p.seed, verbose=0)
        model.save_model(str(tmp_model))
        os.replace(tmp_model, target)
    finally:
        Path(train_path).unlink(missing_ok=True)
        tmp_model.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_calibration(path: str, field: str) -> list[str]:
    """A calibration dataset's texts (JSONL(.gz) or Parquet), empty ones left out."""
    from filters.text_files import read_texts

    return read_texts(path, field)
