"""Progress and statistics of a job, read from its folder (works while it runs)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from workers.job_folder import JobFolder, step_name


def job_progress(output: str | Path) -> dict | None:
    """Per-stage units done / total, docs in/out/created, and an ETA; None before the
    driver starts."""
    folder = JobFolder(output)
    if not folder.started():
        return None
    job = folder.job()
    units = len(job.get("units", []))
    shards = len(job.get("inputs", []))
    steps = job["steps"]
    stages = []
    for st in job["stages"]:
        final = step_name(st["index"], st["name"], "transform" if st["kind"] == "transform" else "select")
        stats = folder.unit_stats(st["index"], st["name"])
        stages.append({
            "stage_index": st["index"], "stage": st["name"], "kind": st["kind"],
            "units_done": folder.done_count(final), "units_total": units,
            "docs_in": sum(s["docs_in"] for s in stats), "docs_out": sum(s["docs_out"] for s in stats),
            "created": sum(s["created"] for s in stats),
        })
    total = units * len(steps["unit"]) + len(steps["fit"]) + shards * len(steps["shard"])
    done = (sum(folder.done_count(s) for s in steps["unit"] + steps["shard"])
            + sum(folder.done(s) for s in steps["fit"]))
    started = datetime.fromisoformat(job["created_at"]).timestamp()
    elapsed = max(0.0, time.time() - started)
    fraction = done / total if total else 0.0
    eta = elapsed * (1 - fraction) / fraction if 0 < fraction < 1 else (0.0 if fraction >= 1 else None)
    return {"fraction": round(fraction, 4), "eta_seconds": None if eta is None else round(eta, 1),
            "complete": folder.complete(), "stages": stages,
            "shards_written": sum(folder.done_count(s) for s in steps["shard"]), "shards_total": shards}


def job_stats(output: str | Path) -> dict | None:
    """The funnel per stage, with per-unit rows."""
    folder = JobFolder(output)
    if not folder.started():
        return None
    job = folder.job()
    funnel = folder.funnel()
    for row in funnel:
        row["units"] = [{k: s[k] for k in ("shard", "unit", "docs_in", "kept", "dropped", "created", "reasons",
                                            "score_seconds")}
                        for s in folder.unit_stats(row["stage_index"], row["stage"])]
    return {"job_id": job["job_id"], "complete": folder.complete(), "stages": funnel}
