"""Re-apply a stage's selection with other thresholds over its stored scores.

No document is re-scored: only ``select`` runs. Only the chosen stage is recomputed;
documents it would newly keep have no scores in later stages (the answer says how many).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from filters.base import Fitted
from filters.registry import get_stage
from workers.job_folder import JobFolder, UnknownStage
from workers.lineage import KEEP
from workers.planner import last_fit_before, score_phases


class ReselectError(ValueError):
    """Why a re-select cannot run; ``code`` says which kind (``not_scored``: the stage has
    not scored every unit yet; ``bad_stage``, ``rescoring_param``, ``refit_param``, ``transform``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def preview_selection(output: str | Path, stage_ref: str | int, params: dict[str, Any]) -> dict:
    folder = JobFolder(output)
    stages = folder.stages()
    try:
        record = folder.stage(stage_ref)
    except UnknownStage as exc:
        raise ReselectError(str(exc), "bad_stage") from None
    index, name = record["index"], record["name"]
    cls = get_stage(name)
    if cls.kind == "transform":
        raise ReselectError(f"{name} is a transform: its output is new text, not a selection over scores",
                            "transform")
    stored = record["params"]
    changed = sorted(k for k, v in params.items() if stored.get(k) != v)
    rescoring = sorted(set(changed) & cls.score_params)
    if rescoring:
        raise ReselectError(f"changing {', '.join(rescoring)} changes how {name} scores documents; run the job again",
                            "rescoring_param")
    refitting = sorted(set(changed) & cls.fit_params)
    if refitting:
        raise ReselectError(f"changing {', '.join(refitting)} changes {name}'s corpus-wide fit (its groups and "
                            "survivors); run the job again", "refit_param")
    stage = cls(cls.Params.model_validate({**stored, **params}))  # pydantic ValidationError names the field
    fit = last_fit_before(stage, None)
    fitted = None
    if fit:
        path = folder.fit(index, name, fit)
        artifacts = folder.artifacts(index, name)
        fitted = Fitted(pq.read_table(path) if path.exists() else None, artifacts if artifacts.exists() else None)
    phase = score_phases(stage)[-1]
    chars = _chars_at(folder, index)
    before, after, counts = Counter(), Counter(), Counter()
    for unit in folder.units():
        scores_path = folder.scores(index, name, unit["key"], phase)
        if not scores_path.exists():
            raise ReselectError(f"{name} has not scored unit {unit['key']} yet", "not_scored")
        scores = pq.read_table(scores_path)
        sel = stage.select(scores, fitted)
        decisions_path = folder.decisions(index, name, unit["key"])
        if decisions_path.exists():
            old = pq.read_table(decisions_path, columns=["decision", "reason"])
            old_keep = [d == KEEP for d in old["decision"].to_pylist()]
            before.update(r for r in old["reason"].to_pylist() if r)
            counts["before_kept"] += sum(old_keep)
            counts["newly_kept"] += sum(n and not o for n, o in zip(sel.keep, old_keep, strict=True))
            counts["newly_dropped"] += sum(o and not n for n, o in zip(sel.keep, old_keep, strict=True))
            counts["before_chars"] += sum(chars.get(i, 0) for i, k in zip(scores["id"].to_pylist(), old_keep,
                                                                          strict=True) if k)
        counts["after_chars"] += sum(chars.get(i, 0) for i, k in zip(scores["id"].to_pylist(), sel.keep,
                                                                     strict=True) if k)
        after.update(r for r in sel.reason if r)
        counts["docs_in"] += scores.num_rows
        counts["after_kept"] += sum(sel.keep)
    return {
        "stage_index": index, "stage": name, "changed_params": changed,
        "params": stage.params.model_dump(mode="json"), "docs_in": counts["docs_in"],
        "before": {"kept": counts["before_kept"], "dropped": counts["docs_in"] - counts["before_kept"],
                   "reasons": dict(before.most_common()), "kept_tokens": counts["before_chars"] // 4},
        "after": {"kept": counts["after_kept"], "dropped": counts["docs_in"] - counts["after_kept"],
                  "reasons": dict(after.most_common()), "kept_tokens": counts["after_chars"] // 4},
        "newly_kept": counts["newly_kept"], "newly_dropped": counts["newly_dropped"],
        "note": "scores were not recomputed; later stages were not re-run, so newly kept documents "
                "have no scores there" if index < len(stages) - 1 else "scores were not recomputed",
    }


def _chars_at(folder: JobFolder, index: int) -> dict[str, int]:
    """Each document's text length when it reached stage ``index``: the input check's
    ``chars``, or ``chars_after`` of the last transform before that edited or created it
    (for kept-token estimates: characters ÷ 4)."""
    files = [str(p) for i, st in enumerate(folder.stages()[:index])
             for p in sorted(folder.stage_dir(i, st["name"]).glob("decisions/*.parquet"))]
    if not files:
        return {}
    value = "coalesce(scores['chars_after'], scores['chars'])"
    rows = duckdb.sql(f"SELECT doc_id, arg_max({value}, stage_index) FROM read_parquet($files, union_by_name = true) "
                      f"WHERE {value} IS NOT NULL GROUP BY doc_id", params={"files": files}).fetchall()
    return {doc_id: int(c) for doc_id, c in rows}
