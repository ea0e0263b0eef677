"""``manifest.json``: what a finished job produced, written last (its presence means the
job is complete). Files with rows, bytes and sha256, the stage funnel, token estimate."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from workers.job_folder import WRITE_STEP, JobFolder
from workers.shards import Shard
from workers.spec import JobSpec


def code_version() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True)
        return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"curate=={version('curate')}"
        except PackageNotFoundError:
            return "unknown"


def build_manifest(spec: JobSpec, folder: JobFolder, shards: list[Shard], job_id: str) -> dict:
    job = folder.job()
    files = []
    for shard in shards:
        facts = folder.read_marker(WRITE_STEP, shard.key)
        files.append({"path": str(folder.output(shard.key).relative_to(folder.root)), "source": shard.path,
                      "rows": facts["rows"], "bytes": facts["bytes"], "sha256": facts["sha256"]})
    funnel = folder.funnel()
    out_text = funnel[-1]["text_bytes_out"]
    return {
        "job_id": job_id, "name": spec.name, "spec_hash": spec.spec_hash(), "code_version": code_version(),
        "model_hashes": job.get("model_hashes", {}), "artifacts": job.get("artifacts", {}),
        "columns": spec.columns.model_dump(),
        "input": {"shards": len(shards), "rows": sum(s.rows for s in shards), "units": len(job.get("units", []))},
        "output": {"rows": sum(f["rows"] for f in files), "bytes": sum(f["bytes"] for f in files),
                   "created": sum(row["created"] for row in funnel), "text_bytes": out_text,
                   # ~4 UTF-8 bytes per token for English BPE vocabularies; a planning estimate only.
                   "est_tokens": out_text // 4},
        "files": files,
        "funnel": funnel,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
