"""``decontam_v1``'s report read back from a job folder, for ``curate contamination`` and
``GET /jobs/{id}/contamination``: per stage, which eval items the training data held and
in how many documents (the table a model card needs)."""

from __future__ import annotations

import json

from filters.decontam import REPORT_FILE, DecontamV1
from workers.job_folder import JobFolder, stage_folder_name


class NoDecontamination(LookupError):
    pass


def contamination_reports(folder: JobFolder) -> list[dict]:
    """One report per decontam_v1 stage of the job; ``ready`` is false until its report fit
    has run. ``NoDecontamination`` if the job has no such stage."""
    job = folder.job()
    stages = [s for s in job.get("stages", []) if s["name"] == DecontamV1.name]
    if not stages:
        raise NoDecontamination(f"job {job.get('job_id')} has no {DecontamV1.name} stage")
    recorded = job.get("artifacts", {})
    reports = []
    for s in stages:
        name = stage_folder_name(s["index"], s["name"])
        sha = recorded.get(name, {}).get(REPORT_FILE)
        entry: dict = {"stage": name, "action": s["params"].get("action"), "ready": sha is not None}
        if sha is not None:
            entry["sha256"] = sha
            entry["report"] = json.loads((folder.artifacts(s["index"], s["name"]) / REPORT_FILE).read_text())
        reports.append(entry)
    return reports


def format_reports(reports: list[dict], limit: int = 50) -> str:
    lines = []
    for entry in reports:
        lines.append(f"{entry['stage']} (action: {entry['action']})")
        if not entry["ready"]:
            lines.append("  not ready: the stage has not finished matching every document")
            continue
        r = entry["report"]
        lines.append(f"  {r['documents_matched']} of {r['documents_checked']} documents hold a {r['ngram']}-gram of "
                     f"an eval item ({r['index']} index)")
        lines.append(f"  {'eval set':<20} {'items':>8} {'too short':>10} {'found':>7} {'documents':>10}")
        for s in r["eval_sets"]:
            lines.append(f"  {s['name']:<20} {s['items']:>8,} {s['too_short_items']:>10,} {s['items_found']:>7,} "
                         f"{s['documents']:>10,}")
        if r["items"]:
            lines.append(f"  {'eval set':<20} {'item':<28} {'documents':>10} {'best overlap':>13}")
            for item in r["items"][:limit]:
                lines.append(f"  {item['eval_set']:<20} {item['item'][:28]:<28} {item['documents']:>10,} "
                             f"{item['best_overlap']:>13.1%}")
            if len(r["items"]) > limit:
                lines.append(f"  … and {len(r['items']) - limit} more items (--json for all)")
    return "\n".join(lines)
