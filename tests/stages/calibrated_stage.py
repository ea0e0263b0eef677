"""A train → score → select stage used by the tests (registered through CURATE_STAGES):
a first scoring phase measures each document, a corpus-wide fit "trains" a model (the
mean length, written as an artifact file), and a scoring phase after the fit scores
every document against it. The shape PreSelect uses (sample → train fastText → score)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from pydantic import Field

from filters.base import SCORE, TEXT, Fitted, Phase, ScoreView, Selection, Stage, StageParams


class CalibratedParams(StageParams):
    min_ratio: float = Field(0.5, ge=0)


class CalibratedLengthTestV1(Stage):
    name = "calibrated_length_test_v1"
    Params = CalibratedParams
    phases = (Phase.score("measure"), Phase.fit("train"), SCORE)
    reasons = ("calibrated.too_short",)

    def measure(self, docs: pa.Table) -> pa.Table:
        return pa.table({"chars": pa.array([len(t or "") for t in docs[TEXT].to_pylist()], pa.int64())})

    def train(self, view: ScoreView, artifacts: Path) -> pa.Table:
        mean = view.sql("SELECT avg(chars) AS mean, count(*) AS n FROM scores").to_pylist()[0]
        (artifacts / "model.json").write_text(json.dumps(mean))
        return pa.table({"mean": [mean["mean"]], "n": [mean["n"]]})

    def score(self, docs: pa.Table, fitted: Fitted) -> pa.Table:
        model = json.loads((fitted.artifacts / "model.json").read_text())
        return pa.table({"ratio": pa.array([len(t or "") / model["mean"] for t in docs[TEXT].to_pylist()])})

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        keep = [r >= self.params.min_ratio for r in scores["ratio"].to_pylist()]
        return Selection(keep=keep, reason=[None if k else "calibrated.too_short" for k in keep])
