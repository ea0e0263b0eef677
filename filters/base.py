"""The stage contract shared by every stage.

A stage has two halves, as in Dolma's taggers + mixer:

* ``score(docs)`` is the expensive half (hashing, model calls). It returns named
  scores per document and never decides anything.
* ``select(scores, fitted)`` is the cheap half: thresholds over stored scores, giving
  keep/drop and a stable ``<family>.<reason>`` string per document. Because scores are
  stored, a new threshold is a re-select, never a re-score.

Corpus-wide stages (``corpus_wide = True``) get a ``fit(all_scores)`` step between
the two halves; its result is handed to every ``select`` call.

Stages are pure: Arrow tables in, Arrow tables out. No Ray, DuckDB or FastAPI here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

ID = "id"
TEXT = "text"
# Global input order (shard index << ORDER_SHARD_SHIFT | row), given to ``fit`` so survivors are
# chosen by a rule that does not depend on worker count or scheduling.
ORDER = "order"
ORDER_SHARD_SHIFT = 32


class StageParams(BaseModel):
    """Base for stage parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Selection:
    """What ``select`` returns, one entry per scored document, in input order."""

    keep: list[bool]
    reason: list[str | None]
    cluster_id: list[str | None] | None = None
    survivor_id: list[str | None] | None = None
    # Extra numeric facts known only after ``fit`` (e.g. a duplicate group's size).
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


class Stage:
    """Subclass, set ``name``/``Params``/``reasons``, implement ``score`` and ``select``."""

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    corpus_wide: ClassVar[bool] = False
    # Every reason string this stage can emit; tests and the API list them.
    reasons: ClassVar[tuple[str, ...]] = ()
    # Params that change ``score`` itself; all others only change ``select``, so a new
    # value for them is a re-select over stored scores.
    score_params: ClassVar[frozenset[str]] = frozenset()
    # Stages that load a model score on a pool of long-lived actors (one model each);
    # their params carry num_actors / cpus_per_actor / num_gpus.
    uses_model: ClassVar[bool] = False

    def __init__(self, params: StageParams | dict | None = None) -> None:
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params = params

    def score(self, docs: pa.Table) -> pa.Table:
        """``docs`` has columns ``id`` and ``text``; return one row of scores per doc."""
        raise NotImplementedError

    def fit(self, scores: pa.Table) -> pa.Table | None:
        """Corpus-wide step over the scores of every document (with ``id`` and ``order``)."""
        return None

    def select(self, scores: pa.Table, fitted: pa.Table | None) -> Selection:
        raise NotImplementedError

    def load(self) -> None:
        """Load any model now (called once per actor); stages without one do nothing."""

    def model_files(self) -> list[str]:
        """Paths of model files this stage loads; their hashes are recorded with the job."""
        return []
