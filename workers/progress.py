"""Progress and statistics of a job, read from its folder (works while it runs)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from workers import atomic
from workers.layout import JobLayout


def _stats(layout: JobLayout, index: int, stage: str) -> list[dict]:
    folder = layout.stage_dir(index, stage) / "stats"
    return [atomic.read_json(p) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def job_progress(output: str | Path) -> dict | None:
    """Per-stage shards done / total, docs in/out, and an ETA; None before the driver starts."""
    layout = JobLayout(output)
    if not layout.job_file.exists():
        return None
    job = atomic.read_json(layout.job_file)
    shards = len(job["inputs"])
    markers = list((layout.root / "_done").glob("*.json")) if (layout.root / "_done").exists() else []
    names = [m.name for m in markers]
    stages = []
    for i, stage in enumerate(job["stages"]):
        stats = _stats(layout, i, stage)
        stages.append({
            "stage_index": i, "stage": stage,
            "shards_done": sum(n.endswith(f".{i:02d}-{stage}.select.json") for n in names), "shards_total": shards,
            "docs_in": sum(s["docs_in"] for s in stats), "docs_out": sum(s["kept"] for s in stats),
        })
    # Steps: score + select per stage and shard, one fit per corpus-wide stage, one write per shard.
    total = shards * (2 * len(job["stages"]) + 1) + sum(n.endswith(".fit.json") for n in names)
    done = len(markers)
    started = datetime.fromisoformat(job["created_at"]).timestamp()
    elapsed = max(0.0, time.time() - started)
    fraction = done / total if total else 1.0
    eta = elapsed * (1 - fraction) / fraction if 0 < fraction < 1 else (0.0 if fraction >= 1 else None)
    return {"fraction": round(fraction, 4), "eta_seconds": None if eta is None else round(eta, 1),
            "complete": layout.manifest.exists(), "stages": stages,
            "shards_written": sum(n.endswith(".write.json") for n in names)}


def job_stats(output: str | Path) -> dict | None:
    """The funnel per stage and per shard."""
    layout = JobLayout(output)
    if not layout.job_file.exists():
        return None
    job = atomic.read_json(layout.job_file)
    stages = []
    for i, stage in enumerate(job["stages"]):
        per_shard = _stats(layout, i, stage)
        reasons: dict[str, int] = {}
        for s in per_shard:
            for r, n in s["reasons"].items():
                reasons[r] = reasons.get(r, 0) + n
        stages.append({
            "stage_index": i, "stage": stage,
            "docs_in": sum(s["docs_in"] for s in per_shard), "kept": sum(s["kept"] for s in per_shard),
            "dropped": sum(s["dropped"] for s in per_shard),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "shards": [{k: s[k] for k in ("shard", "docs_in", "kept", "dropped", "reasons", "score_seconds")}
                       for s in per_shard],
        })
    return {"job_id": job["job_id"], "complete": layout.manifest.exists(), "stages": stages}
