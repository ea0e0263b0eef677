"""The job folder protocol: the one module that knows where everything of a job lives,
what its markers are called, how the funnel is counted and what ``error.json`` holds.

    job.json                                    spec, spec hash, code version, stages, inputs,
                                                work units, steps, model and artifact hashes
    manifest.json                               written last: its presence means "complete"
    error.json                                  why the last run failed (code, message, stage, shard, row)
    data/<shard>.parquet                        curated shards, one per input shard
    stages/<NN>-<stage>/scores/<unit>.parquet   scores of the stage's ``score`` phase
                                                (another scoring phase P: scores-P/)
    stages/<NN>-<stage>/decisions/<unit>.parquet  lineage: a row per document that reached the
                                                stage, and per document a transform created
    stages/<NN>-<stage>/docs/<unit>.parquet     a transform's new version of the documents
    stages/<NN>-<stage>/stats/<unit>.json       docs in / kept / dropped / created, reasons, bytes
    stages/<NN>-<stage>/fit.parquet             corpus-wide result (another fit phase P: fit-P.parquet)
    stages/<NN>-<stage>/artifacts/              files a fit wrote (a trained model, centroids)
    stages/<NN>-<stage>/workspace/              a stage's files that outlive a run (generation cache,
                                                token ledger); reruns keep them
    ablations/<id>/result.json, plot.png        ``curate ablate``: bits per byte per arm and seed (runs/: one
                                                file per finished run, so a rerun resumes)
    _done/<step>/<unit>.json                    completion markers: a folder per step, a file per unit
    _done/<step>.json                           a corpus-wide fit's marker
    _done/write/<shard>.json                    an output shard's marker (rows, bytes, sha256)

Beside the folder, ``.<name>.run-lock`` is held (``flock``) by the process running the job,
so a second run of the same folder is refused rather than interleaved with the first.

Nobody else builds these paths or reads marker names: callers ask this module.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers import atomic
from workers.shards import open_parquet

log = logging.getLogger("curate")
WRITE_STEP = "write"
ERROR_CODES = ("bad_input", "invalid_spec", "output_conflict", "resources_unavailable", "model_load_failed",
               "stage_failed", "write_failed", "internal_error", "token_budget_spent")


def stage_folder_name(index: int, stage: str) -> str:
    return f"{index:02d}-{stage}"


def step_name(index: int, stage: str, step: str) -> str:
    """``01-<stage>.score``: a stage's phase (score / fit / ...) or its select/transform."""
    return f"{stage_folder_name(index, stage)}.{step}"


class UnknownStage(LookupError):
    """A stage reference that names no stage of the job (or names two)."""


class FolderInUse(RuntimeError):
    """Another process is running a job in this folder; the message says which."""


class JobFolder:
    def __init__(self, output: str | Path) -> None:
        self.root = Path(output)

    # -- files of the whole job ---------------------------------------------------------
    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def error_file(self) -> Path:
        return self.root / "error.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def ablations_dir(self) -> Path:
        return self.root / "ablations"

    def ablation_dir(self, ablation_id: str) -> Path:
        return self.ablations_dir / ablation_id

    def ablation_results(self) -> list[dict]:
        """Every finished ablation of the job, oldest first."""
        found = [atomic.read_json(p) for p in self.ablations_dir.glob("*/result.json")]
        return sorted(found, key=lambda r: (r["created_at"], r["ablation_id"]))

    def output(self, shard_key: str) -> Path:
        return self.data_dir / f"{shard_key}.parquet"

    def started(self) -> bool:
        return self.job_file.exists()

    def complete(self) -> bool:
        return self.manifest.exists()

    def job(self) -> dict:
        return atomic.read_json(self.job_file)

    def update_job(self, **fields: Any) -> dict:
        """Add or replace top-level fields of job.json (atomic rewrite)."""
        job = self.job() if self.job_file.exists() else {}
        job.update(fields)
        atomic.write_json(job, self.job_file)
        return job

    # -- per stage ----------------------------------------------------------------------
    def stage_dir(self, index: int, stage: str) -> Path:
        return self.root / "stages" / stage_folder_name(index, stage)

    def bucket_dir(self, index: int, stage: str) -> Path:
        """A bucketed fit's files (``workers/bucketed_fit.py``)."""
        return self.stage_dir(index, stage) / "buckets"

    def bucket_keys(self, index: int, stage: str, unit: str) -> Path:
        return self.bucket_dir(index, stage) / "keys" / f"{unit}.parquet"

    def scores(self, index: int, stage: str, unit: str, phase: str = "score") -> Path:
        folder = "scores" if phase == "score" else f"scores-{phase}"
        return self.stage_dir(index, stage) / folder / f"{unit}.parquet"

    def decisions(self, index: int, stage: str, unit: str) -> Path:
        return self.stage_dir(index, stage) / "decisions" / f"{unit}.parquet"

    def decisions_glob(self) -> str:
        return str(self.root / "stages" / "*" / "decisions" / "*.parquet")

    def version(self, index: int, stage: str, unit: str) -> Path:
        """A transform stage's new version of a unit's documents."""
        return self.stage_dir(index, stage) / "docs" / f"{unit}.parquet"

    def stats(self, index: int, stage: str, unit: str) -> Path:
        return self.stage_dir(index, stage) / "stats" / f"{unit}.json"

    def fit(self, index: int, stage: str, phase: str = "fit") -> Path:
        name = "fit.parquet" if phase == "fit" else f"fit-{phase}.parquet"
        return self.stage_dir(index, stage) / name

    def artifacts(self, index: int, stage: str) -> Path:
        return self.stage_dir(index, stage) / "artifacts"

    def workspace(self, index: int, stage: str) -> Path:
        """A stage's own files that outlive a run (caches of paid model calls), kept when a
        killed or failed job is rerun; only ``--overwrite`` removes them."""
        return self.stage_dir(index, stage) / "workspace"

    def scratch(self, index: int, stage: str) -> Path:
        return self.stage_dir(index, stage) / ".scratch"

    # -- markers ------------------------------------------------------------------------
    def marker(self, step: str, unit: str | None = None) -> Path:
        """``unit`` None for a corpus-wide step (a fit)."""
        done = self.root / "_done"
        return done / step / f"{unit}.json" if unit is not None else done / f"{step}.json"

    def done(self, step: str, unit: str | None = None) -> bool:
        return self.marker(step, unit).exists()

    def done_count(self, step: str) -> int:
        folder = self.root / "_done" / step
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0

    def write_marker(self, step: str, unit: str | None, facts: dict) -> None:
        atomic.write_json(facts, self.marker(step, unit))

    def read_marker(self, step: str, unit: str | None = None) -> dict:
        return atomic.read_json(self.marker(step, unit))

    # -- failure ------------------------------------------------------------------------
    def write_error(self, code: str, message: str, **where: Any) -> None:
        """What the driver records when a run fails; the service reports it as is."""
        assert code in ERROR_CODES, code
        atomic.write_json({"code": code, "message": message, **{k: v for k, v in where.items() if v is not None}},
                          self.error_file)

    def error(self) -> dict | None:
        return atomic.read_json(self.error_file) if self.error_file.exists() else None

    def clear_error(self) -> None:
        self.error_file.unlink(missing_ok=True)

    def reset(self) -> None:
        shutil.rmtree(self.root)

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Held for a whole run. The lock file lies beside the folder, so ``reset`` and the
        emptiness checks never see it; the kernel releases it when the holder dies."""
        path = self.root.parent / f".{self.root.name}.run-lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise FolderInUse(f"{self.root} is in use by another run ({holder}); wait for it to finish, or "
                                  "use another output folder") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{datetime.now(UTC).isoformat(timespec='seconds')}")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- reading a job back -------------------------------------------------------------
    def stages(self) -> list[dict]:
        """The job's stages as recorded: index, name, params (the built-in input check included)."""
        return self.job()["stages"]

    def stage(self, ref: str | int) -> dict:
        """A stage of the job by name (``quality_rules_v1``), index (``2``) or folder name
        (``02-quality_rules_v1``); a name that occurs twice needs the index."""
        stages = self.stages()
        ref = str(ref)
        matches = [st for st in stages if ref in (st["name"], str(st["index"]), stage_folder_name(st["index"],
                                                                                                  st["name"]))]
        if not matches:
            names = ", ".join(f"{st['index']}:{st['name']}" for st in stages)
            raise UnknownStage(f"job has no stage {ref!r} (stages: {names})")
        if len(matches) > 1:
            which = ", ".join(stage_folder_name(st["index"], st["name"]) for st in matches)
            raise UnknownStage(f"stage {ref!r} occurs {len(matches)} times ({which}); name it by index")
        return matches[0]

    def units(self) -> list[dict]:
        return self.job().get("units", [])

    def unit_stats(self, index: int, stage: str) -> list[dict]:
        folder = self.stage_dir(index, stage) / "stats"
        return [atomic.read_json(p) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def funnel(self) -> list[dict]:
        """Per stage: documents in, kept, dropped, created (transforms), edited, reasons and
        text bytes, summed over every unit that has finished the stage."""
        rows = []
        for st in self.stages():
            totals: dict[str, Any] = {"stage_index": st["index"], "stage": st["name"], "kind": st["kind"],
                                      "docs_in": 0, "kept": 0, "dropped": 0, "created": 0, "created_rejected": 0,
                                      "edited": 0, "docs_out": 0, "reasons": {}, "created_reasons": {},
                                      "stage_stats": {}, "text_bytes_in": 0, "text_bytes_out": 0}
            for stats in self.unit_stats(st["index"], st["name"]):
                for key in ("docs_in", "kept", "dropped", "created", "created_rejected", "edited", "docs_out",
                            "text_bytes_in", "text_bytes_out"):
                    totals[key] += stats.get(key, 0)
                for field in ("reasons", "created_reasons", "stage_stats"):
                    for name, count in stats.get(field, {}).items():
                        totals[field][name] = totals[field].get(name, 0) + count
            for field in ("reasons", "created_reasons"):
                totals[field] = dict(sorted(totals[field].items(), key=lambda kv: -kv[1]))
            rows.append(totals)
        return rows

    def texts(self, rows: list[dict], text_column: str) -> list[str | None]:
        """The text each lineage row's document had when it reached that row's stage: from
        its input shard (by row), or from the version of its unit the last transform
        before that stage wrote."""
        stages = self.stages()
        transforms = [st["index"] for st in stages if st["kind"] == "transform"]
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(rows):
            before = [t for t in transforms if t < r["stage_index"]]
            if r.get("change") == "created":  # its own text (none for a rejected attempt), not its source's
                key = ("version", r["stage_index"], r["unit"])
            else:
                key = ("input", r["shard"]) if not before else ("version", before[-1], r["unit"])
            groups.setdefault(key, []).append(k)
        out: list[str | None] = [None] * len(rows)
        for key, ks in groups.items():
            try:
                if key[0] == "input":
                    values = _rows_of(key[1], text_column, [rows[k]["row"] for k in ks])
                else:
                    index, unit = key[1], key[2]
                    version = pq.read_table(self.version(index, stages[index]["name"], unit), columns=["id", "text"])
                    lookup = dict(zip(version["id"].to_pylist(), version["text"].to_pylist(), strict=True))
                    values = [lookup.get(rows[k]["doc_id"]) for k in ks]
            except (OSError, pa.ArrowException) as exc:  # a moved or deleted file: no preview, not an error
                log.warning("no text for %d documents: %s", len(ks), exc)
                continue
            for k, v in zip(ks, values, strict=True):
                out[k] = v
        return out


def _rows_of(path: str, column: str, rows: list[int]) -> list:
    """Some rows of one column of a Parquet file, reading only the row groups that hold
    them (a preview of one document must not read a whole shard)."""
    parquet = open_parquet(path)
    starts = [0]
    for g in range(parquet.metadata.num_row_groups):
        starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
    groups = sorted({bisect.bisect_right(starts, r) - 1 for r in rows})
    table = parquet.read_row_groups(groups, columns=[column])
    offset, at = {}, 0
    for g in groups:
        offset[g], at = at, at + starts[g + 1] - starts[g]
    positions = []
    for r in rows:
        g = bisect.bisect_right(starts, r) - 1
        positions.append(offset[g] + r - starts[g])
    return table[column].take(positions).to_pylist()
