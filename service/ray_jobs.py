"""The Ray Jobs adapter: submit a job driver, ask its state, stop it, read its logs.
Nothing else in the service talks to Ray's job server."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

RAY_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
              "STOPPED": "cancelled"}


class RayJobs:
    """``spec_dir`` holds each submission's spec as a file the driver reads (a command line
    argument is capped at 128 KiB; request bodies may be larger). It must be visible where
    Ray runs job drivers (the head node): ``$CURATE_HOME/specs`` on shared storage."""

    def __init__(self, jobs_url: str, python: str, spec_dir: Path) -> None:
        self.jobs_url, self.python, self.spec_dir = jobs_url, python, spec_dir
        self._client = None

    async def connect(self) -> None:
        from ray.job_submission import JobSubmissionClient

        self._client = await asyncio.to_thread(JobSubmissionClient, self.jobs_url)

    async def reachable(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._client.list_jobs), timeout=5)
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
            return False

    async def submit(self, submission_id: str, spec_json: str, job_id: str) -> None:
        path = self.spec_dir / f"{submission_id}.json"
        await asyncio.to_thread(_write_spec, path, spec_json)
        entrypoint = (f"{shlex.quote(self.python)} -m workers.job_entrypoint --spec-file {shlex.quote(str(path))} "
                      "--no-progress")
        await asyncio.to_thread(self._client.submit_job, entrypoint=entrypoint, submission_id=submission_id,
                                metadata={"curate_job_id": job_id})

    async def submit_ablation(self, submission_id: str, job_dir: str, params_json: str, ablation_id: str,
                              job_id: str) -> None:
        path = self.spec_dir / f"{submission_id}.json"
        await asyncio.to_thread(_write_spec, path, params_json)
        entrypoint = (f"{shlex.quote(self.python)} -m workers.ablate_entrypoint --job-dir {shlex.quote(job_dir)} "
                      f"--params-file {shlex.quote(str(path))} --ablation-id {shlex.quote(ablation_id)}")
        await asyncio.to_thread(self._client.submit_job, entrypoint=entrypoint, submission_id=submission_id,
                                metadata={"curate_job_id": job_id, "curate_ablation_id": ablation_id})

    async def submit_plan(self, submission_id: str, spec_json: str) -> Path:
        """``curate plan`` as a Ray job, so it measures on the cluster's head node and counts
        the cluster's CPUs; returns the file its plan will be written to."""
        path = self.spec_dir / f"{submission_id}.json"
        out = self.spec_dir / f"{submission_id}.plan.json"
        await asyncio.to_thread(_write_spec, path, spec_json)
        entrypoint = (f"{shlex.quote(self.python)} -m service.cli plan {shlex.quote(str(path))} --json "
                      f"--out {shlex.quote(str(out))}")
        await asyncio.to_thread(self._client.submit_job, entrypoint=entrypoint, submission_id=submission_id,
                                metadata={"curate_plan": "1"})
        return out

    async def state(self, submission_id: str) -> tuple[str | None, str | None]:
        """(queued/running/succeeded/failed/cancelled, Ray's message), or (None, None) when
        the cluster has no record of the submission (e.g. a restarted local head)."""
        try:
            info = await asyncio.to_thread(self._client.get_job_info, submission_id)
        except RuntimeError:
            # Ray answers an unknown id with an error; tell that apart from an outage by
            # whether the submission is listed, not by the wording of the message.
            listed = {j.submission_id for j in await asyncio.to_thread(self._client.list_jobs)}
            if submission_id in listed:
                raise
            return None, None
        return RAY_STATES.get(str(info.status).split(".")[-1], "queued"), info.message

    async def stop(self, submission_id: str) -> None:
        await asyncio.to_thread(self._client.stop_job, submission_id)

    async def logs(self, submission_id: str) -> str:
        return await asyncio.to_thread(self._client.get_job_logs, submission_id)


def _write_spec(path: Path, spec_json: str) -> None:
    from workers import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(spec_json, path)
    os.chmod(path, 0o600)
