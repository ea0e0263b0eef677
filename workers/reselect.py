"""Re-apply a stage's selection with other thresholds over its stored scores.

No document is re-scored: only ``select`` runs. Only the chosen stage is recomputed;
documents it would newly keep have no scores in later stages (the answer says how many).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from filters.registry import get_stage
from workers import atomic
from workers.layout import JobLayout


class ReselectError(ValueError):
    pass


def preview_selection(output: str | Path, stage_ref: str | int, params: dict[str, Any]) -> dict:
    layout = JobLayout(output)
    job = atomic.read_json(layout.job_file)
    names = job["stages"]
    if isinstance(stage_ref, int) or str(stage_ref).isdigit():
        index = int(stage_ref)
        if not 0 <= index < len(names):
            raise ReselectError(f"stage index {index} out of range (job has {len(names)} stages)")
    elif stage_ref in names:
        index = names.index(stage_ref)
    else:
        raise ReselectError(f"stage {stage_ref!r} is not in this job (stages: {', '.join(names)})")
    name = names[index]
    cls = get_stage(name)
    stored = job["spec"]["stages"][index - 1]["params"] if index > 0 else {}
    changed = sorted(k for k, v in params.items() if stored.get(k) != v)
    rescoring = sorted(set(changed) & cls.score_params)
    if rescoring:
        raise ReselectError(f"changing {', '.join(rescoring)} changes how {name} scores documents; run the job again")
    stage = cls(cls.Params.model_validate({**stored, **params}))  # pydantic ValidationError names the field
    fitted = pq.read_table(layout.fit(index, name)) if cls.corpus_wide else None
    before, after = Counter(), Counter()
    counts = Counter()
    for shard in job["inputs"]:
        scores_path = layout.scores(index, name, shard["key"])
        if not scores_path.exists():
            raise ReselectError(f"{name} has not scored shard {shard['path']} yet")
        scores = pq.read_table(scores_path)
        sel = stage.select(scores, fitted)
        decisions_path = layout.decisions(index, name, shard["key"])
        if decisions_path.exists():
            old = pq.read_table(decisions_path, columns=["decision", "reason"])
            old_keep = [d == "keep" for d in old["decision"].to_pylist()]
            old_reason = old["reason"].to_pylist()
            before.update(r for r in old_reason if r)
            counts["before_kept"] += sum(old_keep)
            counts["newly_kept"] += sum(n and not o for n, o in zip(sel.keep, old_keep, strict=True))
            counts["newly_dropped"] += sum(o and not n for n, o in zip(sel.keep, old_keep, strict=True))
        after.update(r for r in sel.reason if r)
        counts["docs_in"] += scores.num_rows
        counts["after_kept"] += sum(sel.keep)
    return {
        "stage_index": index, "stage": name, "changed_params": changed,
        "params": stage.params.model_dump(mode="json"), "docs_in": counts["docs_in"],
        "before": {"kept": counts["before_kept"], "dropped": counts["docs_in"] - counts["before_kept"],
                   "reasons": dict(before.most_common())},
        "after": {"kept": counts["after_kept"], "dropped": counts["docs_in"] - counts["after_kept"],
                  "reasons": dict(after.most_common())},
        "newly_kept": counts["newly_kept"], "newly_dropped": counts["newly_dropped"],
        "note": "scores were not recomputed; later stages were not re-run, so newly kept documents "
                "have no scores there" if index < len(names) - 1 else "scores were not recomputed",
    }
