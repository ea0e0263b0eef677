"""The DuckDB lineage catalog.

Exactly one process writes it (the service, or the CLI when it runs alone): DuckDB
locks a database file against every other process, readers included. Workers never
touch it; they write Parquet in the job folder, and ``register_job`` copies the small
facts (job, stages, shards, per-shard stats) into tables and points the ``decisions``
view at the decision files, so "why was X dropped" is one query.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import duckdb

from workers import atomic
from workers.layout import JobLayout

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR PRIMARY KEY, name VARCHAR, status VARCHAR, error VARCHAR, output VARCHAR,
    spec_hash VARCHAR, code_version VARCHAR, spec JSON, model_hashes JSON,
    created_at VARCHAR, completed_at VARCHAR, input_rows BIGINT, output_rows BIGINT
);
CREATE TABLE IF NOT EXISTS stages (
    job_id VARCHAR, stage_index INTEGER, stage VARCHAR, params JSON,
    docs_in BIGINT, kept BIGINT, dropped BIGINT, reasons JSON
);
CREATE TABLE IF NOT EXISTS shards (
    job_id VARCHAR, kind VARCHAR, path VARCHAR, rows BIGINT, bytes BIGINT, sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS stage_stats (
    job_id VARCHAR, stage_index INTEGER, stage VARCHAR, shard VARCHAR, docs_in BIGINT, kept BIGINT,
    dropped BIGINT, reasons JSON, text_bytes_in BIGINT, text_bytes_kept BIGINT, score_seconds DOUBLE
);
"""

NO_DECISIONS = """SELECT
    NULL::VARCHAR AS job_id, NULL::INTEGER AS stage_index, NULL::VARCHAR AS stage, NULL::VARCHAR AS shard,
    NULL::BIGINT AS row, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS decision, NULL::VARCHAR AS reason,
    NULL::MAP(VARCHAR, DOUBLE) AS scores, NULL::VARCHAR AS cluster_id, NULL::VARCHAR AS survivor_id
WHERE false"""


class CatalogError(RuntimeError):
    pass


def default_path() -> Path:
    return Path(os.environ.get("CURATE_HOME", Path.home() / ".curate")) / "catalog.duckdb"


class Catalog:
    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path else default_path()
        if read_only and not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run a job first (curate run / curate demo)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            raise CatalogError(
                f"catalog {self.path} is locked by another process (a running `curate serve` or job?): {exc}"
            ) from None
        if not read_only:
            self.con.execute(SCHEMA)
            self._refresh_decisions_view()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing (single writer) -------------------------------------------------------
    def register_job(self, output: str | Path, *, error: str | None = None) -> str:
        """Copy a job folder's facts into the catalog; safe to repeat (replaces the job's rows)."""
        layout = JobLayout(output)
        if not layout.job_file.exists():
            raise CatalogError(f"{layout.root} is not a curate job folder (no job.json)")
        job = atomic.read_json(layout.job_file)
        manifest = atomic.read_json(layout.manifest) if layout.manifest.exists() else None
        job_id = job["job_id"]
        status = "succeeded" if manifest else ("failed" if error else "incomplete")
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for table in ("jobs", "stages", "shards", "stage_stats"):
                con.execute(f"DELETE FROM {table} WHERE job_id = ?", [job_id])
            con.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, job["name"], status, error, str(layout.root.resolve()), job["spec_hash"],
                 job["code_version"], json.dumps(job["spec"]), json.dumps(job["model_hashes"]),
                 job["created_at"], manifest and manifest["completed_at"],
                 sum(s["rows"] for s in job["inputs"]), manifest and manifest["output"]["rows"]],
            )
            for shard in job["inputs"]:
                con.execute("INSERT INTO shards VALUES (?, 'input', ?, ?, NULL, NULL)",
                            [job_id, shard["path"], shard["rows"]])
            for f in manifest["files"] if manifest else []:
                con.execute("INSERT INTO shards VALUES (?, 'output', ?, ?, ?, ?)",
                            [job_id, str(layout.root / f["path"]), f["rows"], f["bytes"], f["sha256"]])
            self._insert_stats(job_id, job, layout, manifest)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        self._refresh_decisions_view()
        return job_id

    def _insert_stats(self, job_id: str, job: dict, layout: JobLayout, manifest: dict | None) -> None:
        params = [{}] + [s["params"] for s in job["spec"]["stages"]]
        for i, stage in enumerate(job["stages"]):
            for path in sorted(glob.glob(str(layout.stage_dir(i, stage) / "stats" / "*.json"))):
                s = atomic.read_json(Path(path))
                self.con.execute(
                    "INSERT INTO stage_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [job_id, i, stage, s["shard"], s["docs_in"], s["kept"], s["dropped"], json.dumps(s["reasons"]),
                     s["text_bytes_in"], s["text_bytes_kept"], s["score_seconds"]],
                )
            row = next((f for f in manifest["funnel"] if f["stage_index"] == i), None) if manifest else None
            self.con.execute(
                "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, i, stage, json.dumps(params[i]), row and row["docs_in"], row and row["kept"],
                 row and row["dropped"], json.dumps(row["reasons"]) if row else None],
            )

    def _refresh_decisions_view(self) -> None:
        outputs = [r[0] for r in self.con.execute("SELECT output FROM jobs ORDER BY job_id").fetchall()]
        globs = [JobLayout(o).decisions_glob() for o in outputs]
        globs = [g for g in globs if glob.glob(g)]
        if not globs:
            self.con.execute(f"CREATE OR REPLACE VIEW decisions AS {NO_DECISIONS}")
            return
        files = ", ".join("'" + g.replace("'", "''") + "'" for g in globs)
        self.con.execute(f"CREATE OR REPLACE VIEW decisions AS SELECT * FROM read_parquet([{files}])")

    # -- reading -----------------------------------------------------------------------
    def resolve_job(self, ref: str) -> dict[str, Any]:
        """A job by id, by name (latest), or by its output folder."""
        cols = ["job_id", "name", "status", "error", "output", "spec_hash", "code_version",
                "created_at", "completed_at", "input_rows", "output_rows"]
        sql = f"SELECT {', '.join(cols)} FROM jobs WHERE job_id = ? OR name = ? OR output = ? ORDER BY created_at DESC"
        folder = str(Path(ref).resolve()) if Path(ref).exists() else ref
        row = self.con.execute(sql, [ref, ref, folder]).fetchone()
        if row is None:
            raise CatalogError(f"no job {ref!r} in catalog {self.path}")
        return dict(zip(cols, row, strict=True))

    def jobs(self) -> list[dict[str, Any]]:
        cur = self.con.execute(
            "SELECT job_id, name, status, input_rows, output_rows, completed_at, output FROM jobs ORDER BY created_at"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def job_decisions(self, job: dict[str, Any]) -> str:
        """A FROM clause over one job's decision files only (the ``decisions`` view spans
        every job, and breaks if any job folder was deleted since it was built)."""
        pattern = JobLayout(job["output"]).decisions_glob()
        if not glob.glob(pattern):
            if not Path(job["output"]).exists():
                raise CatalogError(f"job {job['job_id']}: its folder {job['output']} no longer exists")
            return f"({NO_DECISIONS})"
        return "read_parquet('" + pattern.replace("'", "''") + "')"

    def why(self, job_ref: str, doc_id: str) -> dict[str, Any]:
        """Every stage the document reached, its scores, decision and reason."""
        job = self.resolve_job(job_ref)
        cur = self.con.execute(
            "SELECT stage_index, stage, decision, reason, scores, cluster_id, survivor_id, shard, row "
            f"FROM {self.job_decisions(job)} WHERE job_id = ? AND doc_id = ? ORDER BY stage_index",
            [job["job_id"], doc_id],
        )
        names = [d[0] for d in cur.description]
        stages = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        n_stages = self.con.execute(
            "SELECT count(*) FROM stages WHERE job_id = ?", [job["job_id"]]
        ).fetchone()[0]
        dropped = next((s for s in stages if s["decision"] == "drop"), None)
        if not stages:
            outcome = "unknown"
        elif dropped:
            outcome = "dropped"
        elif len(stages) == n_stages and job["status"] == "succeeded":
            outcome = "kept"
        else:
            outcome = "pending"
        return {
            "job_id": job["job_id"], "doc_id": doc_id, "outcome": outcome,
            "dropped_at": dropped and dropped["stage"], "reason": dropped and dropped["reason"],
            "stages": stages,
        }


def why(job: str, doc_id: str, catalog_path: str | Path | None = None) -> dict[str, Any]:
    """The lineage answer for one document (the service calls this too)."""
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.why(job, doc_id)
