"""The DuckDB lineage catalog: the one module that holds a DuckDB connection to it and
writes its SQL.

Exactly one process writes it (the service, or the CLI when it runs alone): DuckDB
locks a database file against every other process, readers included. Workers never
touch it; they write Parquet in the job folder, and ``register_job`` copies the small
facts (job, stages, shards, per-unit stats) into tables and points the ``decisions``
view at the decision files, so "why was X dropped" is one query.

A job has one record, the ``jobs`` row: what the job folder says (spec, counts,
completion) and what the service adds (state, submission, attempts). While a job runs
on Ray, Ray is the source of truth for its state; the row is updated when it ends.
"""

from __future__ import annotations

import glob
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from workers.job_folder import JobFolder

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR PRIMARY KEY, name VARCHAR, state VARCHAR, error VARCHAR, error_code VARCHAR, output VARCHAR,
    spec_hash VARCHAR, code_version VARCHAR, spec JSON, model_hashes JSON, artifacts JSON,
    created_at VARCHAR, completed_at VARCHAR, input_rows BIGINT, output_rows BIGINT, created_docs BIGINT,
    idempotency_key VARCHAR, attempts INTEGER, submission_id VARCHAR
);
CREATE TABLE IF NOT EXISTS stages (
    job_id VARCHAR, stage_index INTEGER, stage VARCHAR, kind VARCHAR, params JSON,
    docs_in BIGINT, kept BIGINT, dropped BIGINT, created BIGINT, edited BIGINT, reasons JSON
);
CREATE TABLE IF NOT EXISTS shards (
    job_id VARCHAR, kind VARCHAR, path VARCHAR, rows BIGINT, bytes BIGINT, sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS stage_stats (
    job_id VARCHAR, stage_index INTEGER, stage VARCHAR, shard VARCHAR, unit VARCHAR, docs_in BIGINT, kept BIGINT,
    dropped BIGINT, created BIGINT, reasons JSON, text_bytes_in BIGINT, text_bytes_out BIGINT, score_seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS ablation_arms (
    job_id VARCHAR, ablation_id VARCHAR, created_at VARCHAR, model VARCHAR, tokens BIGINT, seeds INTEGER,
    eval_path VARCHAR, eval_sha256 VARCHAR, arm VARCHAR, kind VARCHAR, stage VARCHAR, docs BIGINT,
    bits_per_byte DOUBLE, ci_low DOUBLE, ci_high DOUBLE, delta_vs_random DOUBLE, contaminated BIGINT,
    removed BIGINT, flagged BOOLEAN
);
CREATE TABLE IF NOT EXISTS ablation_submissions (
    ablation_id VARCHAR, job_id VARCHAR, submission_id VARCHAR PRIMARY KEY, params JSON, created_at VARCHAR
);
"""
JOB_COLUMNS = ["job_id", "name", "state", "error", "error_code", "output", "spec_hash", "code_version", "spec",
               "model_hashes", "artifacts", "created_at", "completed_at", "input_rows", "output_rows",
               "created_docs", "idempotency_key", "attempts", "submission_id"]
# What the service owns in a job record (the rest comes from the job folder).
SUBMISSION_FIELDS = ("job_id", "name", "output", "spec", "created_at", "idempotency_key", "state", "error",
                     "error_code", "attempts", "submission_id")
TERMINAL = ("succeeded", "failed", "cancelled")

NO_DECISIONS = """SELECT
    NULL::VARCHAR AS job_id, NULL::INTEGER AS stage_index, NULL::VARCHAR AS stage, NULL::VARCHAR AS shard,
    NULL::VARCHAR AS unit, NULL::BIGINT AS row, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS parent_id,
    NULL::VARCHAR AS decision, NULL::VARCHAR AS reason, NULL::VARCHAR AS change,
    NULL::MAP(VARCHAR, DOUBLE) AS scores, NULL::VARCHAR AS cluster_id, NULL::VARCHAR AS survivor_id,
    NULL::VARCHAR AS detail
WHERE false"""


class CatalogError(RuntimeError):
    pass


class CatalogDamaged(CatalogError):
    """The file is not a DuckDB database any more (truncated, overwritten)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"catalog {path} cannot be opened ({reason}); `curate catalog rebuild` moves it aside and "
                         "rebuilds it from the job folders")
        self.reason = reason


def _parse_detail(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lineage stores ``detail`` (non-numeric facts, e.g. a synthetic document's style and
    model) as JSON text; callers get it as an object."""
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row.get("detail") else None
    return rows


def default_path() -> Path:
    return Path(os.environ.get("CURATE_HOME", Path.home() / ".curate")) / "catalog.duckdb"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_decisions(patterns: list[str]) -> str:
    # Job folders written by older versions lack newer lineage columns: union_by_name fills
    # a column some files have, and the typed empty relation one that none has.
    files = f"read_parquet([{', '.join(_quote(p) for p in patterns)}], union_by_name = true)"
    return f"(SELECT * FROM ({NO_DECISIONS}) UNION ALL BY NAME SELECT * FROM {files})"


class Catalog:
    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path else default_path()
        if read_only and not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run a job first (curate run / curate demo)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(read_only)
        except duckdb.Error as exc:
            if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
                raise CatalogError(f"catalog {self.path} is locked by another process (a running `curate serve` "
                                   f"or job?): {exc}") from None
            raise CatalogDamaged(self.path, str(exc)) from None
        if not read_only:  # (reads the job folders' files: their errors are theirs, not the catalog's)
            self._refresh_decisions_view()

    def _open(self, read_only: bool) -> None:
        self._con = duckdb.connect(str(self.path), read_only=read_only)
        if read_only and self._needs_migration():  # written by an earlier version: migrate it once
            self._con.close()
            Catalog(self.path).close()
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        if not read_only:
            self._migrate()
            self._con.execute(SCHEMA)
            self._con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('schema_version', ?)",
                              [str(SCHEMA_VERSION)])

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: list | None = None) -> list[dict[str, Any]]:
        cur = self._con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def sql(self, query: str, params: list | None = None) -> list[dict[str, Any]]:
        """An ad-hoc query (tables ``jobs``, ``stages``, ``shards``, ``stage_stats``, view
        ``decisions``), rows as dicts."""
        return self._rows(query, params)

    def _tables(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT table_name FROM information_schema.tables").fetchall()}

    def ping(self) -> bool:
        return self._con.execute("SELECT 1").fetchone() == (1,)

    def _needs_migration(self) -> bool:
        columns = {r[0] for r in self._con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'").fetchall()}
        return "status" in columns

    def _migrate(self) -> None:
        """Catalogs of version 1 had ``jobs.status`` and the API's own ``api_jobs`` table: fold
        them into the one ``jobs`` record (nothing is lost; stages/shards are re-registered)."""
        if not self._needs_migration():
            return
        tables = self._tables()
        old = self._rows("SELECT * FROM jobs")
        api = {r["job_id"]: r for r in self._rows("SELECT * FROM api_jobs")} if "api_jobs" in tables else {}
        for table in ("jobs", "stages", "shards", "stage_stats", "api_jobs"):
            self._con.execute(f"DROP TABLE IF EXISTS {table}")
        self._con.execute(SCHEMA)
        for row in old:
            a = api.pop(row["job_id"], {})
            state = a.get("state") or {"incomplete": "failed"}.get(row["status"], row["status"])
            self._upsert({**{k: row.get(k) for k in JOB_COLUMNS if k in row}, **a, "state": state})
        for a in api.values():
            self._upsert(a)
        for row in self._rows("SELECT output FROM jobs"):
            if JobFolder(row["output"]).started():
                self._insert_folder_facts(JobFolder(row["output"]))

    # -- writing (single writer) -------------------------------------------------------
    def _upsert(self, fields: dict[str, Any]) -> None:
        """Insert or update a job record; only the given fields change."""
        fields = {k: (json.dumps(v) if k in ("spec", "model_hashes", "artifacts") and not isinstance(v, str | None)
                      else v) for k, v in fields.items() if k in JOB_COLUMNS}
        names = list(fields)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "job_id")
        self._con.execute(
            f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT (job_id) DO {'UPDATE SET ' + updates if updates else 'NOTHING'}",
            [fields[n] for n in names])

    def save_submission(self, record: dict[str, Any]) -> None:
        """The service's part of a job record (state, attempts, submission id, ...)."""
        self._upsert({k: record[k] for k in SUBMISSION_FIELDS if k in record})

    def save_ablation_submission(self, row: dict[str, Any]) -> None:
        self._con.execute("INSERT INTO ablation_submissions VALUES (?, ?, ?, ?, ?)",
                          [row["ablation_id"], row["job_id"], row["submission_id"], json.dumps(row["params"]),
                           row["created_at"]])

    def ablation_submissions(self, job_id: str) -> list[dict[str, Any]]:
        """Ablations the service launched for a job, newest submission last."""
        return self._rows("SELECT * FROM ablation_submissions WHERE job_id = ? ORDER BY created_at", [job_id])

    def submissions(self) -> list[dict[str, Any]]:
        return self._rows(f"SELECT {', '.join(SUBMISSION_FIELDS)} FROM jobs WHERE submission_id IS NOT NULL "
                          "ORDER BY created_at, job_id")

    def register_job(self, output: str | Path, *, state: str | None = None, error: str | None = None,
                     error_code: str | None = None) -> str:
        """Copy a job folder's facts into the catalog; safe to repeat (replaces the job's
        stage, shard and stats rows; keeps what the service recorded)."""
        folder = JobFolder(output)
        if not folder.started():
            raise CatalogError(f"{folder.root} is not a curate job folder (no job.json)")
        job = folder.job()
        manifest = json.loads(folder.manifest.read_text()) if folder.complete() else None
        if state is None:
            state = "succeeded" if manifest else ("failed" if error else "running")
        self._con.execute("BEGIN TRANSACTION")
        try:
            self._upsert({
                "job_id": job["job_id"], "name": job["name"], "state": state, "error": error, "error_code": error_code,
                "output": str(folder.root.resolve()), "spec_hash": job["spec_hash"],
                "code_version": job["code_version"], "spec": job["spec"], "model_hashes": job.get("model_hashes", {}),
                "artifacts": job.get("artifacts", {}), "created_at": job["created_at"],
                "completed_at": manifest and manifest["completed_at"],
                "input_rows": sum(s["rows"] for s in job.get("inputs", [])),
                "output_rows": manifest and manifest["output"]["rows"],
                "created_docs": manifest and manifest["output"]["created"],
            })
            self._insert_folder_facts(folder, manifest)
            self._con.execute("COMMIT")
        except Exception:
            self._con.execute("ROLLBACK")
            raise
        self._refresh_decisions_view()
        return job["job_id"]

    def _insert_folder_facts(self, folder: JobFolder, manifest: dict | None = None) -> None:
        job = folder.job()
        job_id = job["job_id"]
        for table in ("stages", "shards", "stage_stats", "ablation_arms"):
            self._con.execute(f"DELETE FROM {table} WHERE job_id = ?", [job_id])
        for result in folder.ablation_results():
            for arm in result["arms"]:
                bpb, cont = arm["bits_per_byte"], arm["contamination"]
                self._con.execute(
                    "INSERT INTO ablation_arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [job_id, result["ablation_id"], result["created_at"], result["params"]["model"],
                     result["tokens"], result["params"]["seeds"], result["eval"]["path"], result["eval"]["sha256"],
                     arm["name"], arm["kind"], arm["stage"], arm["docs"], bpb["mean"],
                     bpb["ci95"][0] if bpb["ci95"] else None, bpb["ci95"][1] if bpb["ci95"] else None,
                     arm["delta_vs_random"], cont["contaminated"], cont["removed"], cont["flagged"]])
        for shard in job.get("inputs", []):
            self._con.execute("INSERT INTO shards VALUES (?, 'input', ?, ?, NULL, NULL)",
                              [job_id, shard["path"], shard["rows"]])
        for f in manifest["files"] if manifest else []:
            self._con.execute("INSERT INTO shards VALUES (?, 'output', ?, ?, ?, ?)",
                              [job_id, str(folder.root / f["path"]), f["rows"], f["bytes"], f["sha256"]])
        for row in folder.funnel():
            i, stage = row["stage_index"], row["stage"]
            for s in folder.unit_stats(i, stage):
                self._con.execute(
                    "INSERT INTO stage_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [job_id, i, stage, s["shard"], s["unit"], s["docs_in"], s["kept"], s["dropped"], s["created"],
                     json.dumps(s["reasons"]), s["text_bytes_in"], s["text_bytes_out"], s["score_seconds"]])
            params = json.dumps(job["stages"][i]["params"])
            self._con.execute("INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              [job_id, i, stage, row["kind"], params, row["docs_in"], row["kept"], row["dropped"],
                               row["created"], row["edited"], json.dumps(row["reasons"])])

    def _refresh_decisions_view(self) -> None:
        outputs = [r[0] for r in self._con.execute("SELECT output FROM jobs ORDER BY job_id").fetchall()]
        globs = [g for g in (JobFolder(o).decisions_glob() for o in outputs if o) if glob.glob(g)]
        body = f"SELECT * FROM {_read_decisions(globs)}" if globs else NO_DECISIONS
        self._con.execute(f"CREATE OR REPLACE VIEW decisions AS {body}")

    # -- reading -----------------------------------------------------------------------
    def resolve_job(self, ref: str) -> dict[str, Any]:
        """A job by id, by name (latest), or by its output folder."""
        folder = str(Path(ref).resolve()) if Path(ref).exists() else ref
        rows = self._rows("SELECT job_id, name, state, error, error_code, output, spec_hash, code_version, "
                          "created_at, completed_at, input_rows, output_rows, created_docs FROM jobs "
                          "WHERE job_id = ? OR name = ? OR output = ? ORDER BY created_at DESC LIMIT 1",
                          [ref, ref, folder])
        if not rows:
            raise CatalogError(f"no job {ref!r} in catalog {self.path}")
        return rows[0]

    def jobs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT job_id, name, state, input_rows, output_rows, created_docs, completed_at, output "
                          "FROM jobs ORDER BY created_at")

    def ablation_arms(self, job_ref: str | None = None) -> list[dict[str, Any]]:
        """Ablation results per arm, of one job or of every job (to compare jobs that were
        ablated on the same eval set and token budget)."""
        if "ablation_arms" not in self._tables():  # a catalog written before ablations existed, opened read-only
            return []
        where, params = ("WHERE a.job_id = ?", [self.resolve_job(job_ref)["job_id"]]) if job_ref else ("", [])
        return self._rows("SELECT j.name AS job_name, a.* FROM ablation_arms a LEFT JOIN jobs j USING (job_id) "
                          f"{where} ORDER BY a.created_at, a.ablation_id, a.bits_per_byte", params)

    def _job_decisions(self, job: dict[str, Any]) -> str:
        """A FROM clause over one job's decision files only (the ``decisions`` view spans
        every job, and breaks if any job folder was deleted since it was built)."""
        if not job["output"] or not Path(job["output"]).exists():
            raise CatalogError(f"job {job['job_id']}: its folder {job['output']} no longer exists")
        pattern = JobFolder(job["output"]).decisions_glob()
        return f"({_read_decisions([pattern])})" if glob.glob(pattern) else f"({NO_DECISIONS})"

    def _doc_rows(self, source: str, job_id: str, doc_id: str) -> list[dict[str, Any]]:
        return _parse_detail(self._rows(
            "SELECT stage_index, stage, decision, reason, change, scores, cluster_id, survivor_id, parent_id, shard, "
            f"unit, row, detail FROM {source} WHERE job_id = ? AND doc_id = ? ORDER BY stage_index, change NULLS FIRST",
            [job_id, doc_id]))

    def why(self, job_ref: str, doc_id: str) -> dict[str, Any]:
        """Every stage the document reached (scores, decision, reason), the chain of sources
        it was created from, and the documents created from it."""
        job = self.resolve_job(job_ref)
        source = self._job_decisions(job)
        stages = self._doc_rows(source, job["job_id"], doc_id)
        n_stages = self._con.execute("SELECT count(*) FROM stages WHERE job_id = ?", [job["job_id"]]).fetchone()[0]
        dropped = next((s for s in stages if s["decision"] == "drop"), None)
        last = stages[-1]["stage_index"] if stages else -1
        if not stages:
            outcome = "unknown"
        elif dropped:
            outcome = "dropped"
        elif last == n_stages - 1 and job["state"] == "succeeded":
            outcome = "kept"
        else:
            outcome = "pending"
        chain, parent = [], stages[0]["parent_id"] if stages else None
        while parent is not None and len(chain) < 100:
            rows = self._doc_rows(source, job["job_id"], parent)
            chain.append({"doc_id": parent, "stages": rows})
            parent = rows[0]["parent_id"] if rows else None
        children = self._rows(
            f"SELECT doc_id, stage, stage_index FROM {source} WHERE job_id = ? AND parent_id = ? "
            "AND change = 'created' ORDER BY stage_index, unit, doc_id", [job["job_id"], doc_id])
        created = next((s for s in stages if s["change"] == "created"), None)
        edited = [s for s in stages if s["change"] == "edited"]
        return {
            "job_id": job["job_id"], "doc_id": doc_id, "outcome": outcome,
            "dropped_at": dropped and dropped["stage"], "reason": dropped and dropped["reason"],
            "created_by": created and created["stage"], "parent_id": stages[0]["parent_id"] if stages else None,
            "edited_by": [s["stage"] for s in edited],
            "sources": chain, "children": children, "stages": stages,
        }

    def lineage_rows(self, job_ref: str, *, decision: str | None = None, stage: str | None = None,
                     reason: str | None = None, change: str | None = None, limit: int = 20,
                     after: list | None = None) -> list[dict[str, Any]]:
        """Lineage rows of one job in (stage_index, doc_id) order, filtered, after the
        cursor key ``after`` = [stage_index, doc_id]; where each document's text is too."""
        job = self.resolve_job(job_ref)
        sql = ("SELECT doc_id, parent_id, stage, stage_index, decision, reason, change, scores, cluster_id, "
               f"survivor_id, shard, unit, row, detail FROM {self._job_decisions(job)} WHERE job_id = ?")
        params: list[Any] = [job["job_id"]]
        for column, value in (("decision", decision), ("stage", stage), ("reason", reason), ("change", change)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if after is not None:
            sql += " AND (stage_index > ? OR (stage_index = ? AND doc_id > ?))"
            params += [after[0], after[0], after[1]]
        return _parse_detail(self._rows(sql + " ORDER BY stage_index, doc_id LIMIT ?", [*params, limit]))

    def reason_examples(self, job_ref: str, per_reason: int = 3) -> list[dict[str, Any]]:
        """A few dropped documents for every (stage, reason) of a job, in one scan."""
        job = self.resolve_job(job_ref)
        return self._rows(
            "SELECT stage_index, reason, doc_id FROM (SELECT stage_index, reason, doc_id, row_number() OVER "
            "(PARTITION BY stage_index, reason ORDER BY doc_id) AS k FROM "
            f"{self._job_decisions(job)} WHERE job_id = ? AND decision = 'drop' AND change IS NULL) "
            "WHERE k <= ? ORDER BY stage_index, reason, doc_id", [job["job_id"], per_reason])

    def cluster_members(self, job_ref: str, stage: str, cluster_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The documents one stage put in one cluster (duplicates, concept clusters), kept
        ones first, with their decision, reason and scores (e.g. Jaccard to the survivor)."""
        job = self.resolve_job(job_ref)
        return self._rows(
            f"SELECT doc_id, decision, reason, survivor_id, scores FROM {self._job_decisions(job)} "
            "WHERE job_id = ? AND stage = ? AND cluster_id = ? ORDER BY decision DESC, doc_id LIMIT ?",
            [job["job_id"], stage, cluster_id, limit])

    def examples(self, job_ref: str, stage: str) -> dict[str, str | None]:
        """One dropped and one kept document of a stage (for the CLI's hints)."""
        job = self.resolve_job(job_ref)
        source = self._job_decisions(job)
        found = {}
        for decision in ("drop", "keep"):
            row = self._con.execute(f"SELECT doc_id FROM {source} WHERE job_id = ? AND decision = ? AND stage = ? "
                                    "ORDER BY doc_id LIMIT 1", [job["job_id"], decision, stage]).fetchone()
            found[decision] = row[0] if row else None
        return found


def find_job_folders(roots: list[Path]) -> list[Path]:
    """Every job folder (one with ``job.json``) under ``roots``, not descending into one."""
    found = []
    for root in roots:
        for here, dirs, files in os.walk(root):
            if "job.json" in files:
                found.append(Path(here))
                dirs.clear()
            else:
                dirs.sort()
    return found


def rebuild(catalog: Catalog, roots: list[Path]) -> list[str]:
    """Register every job folder under ``roots`` that the catalog does not know, as the
    service's record of it: what a lost
    or damaged catalog held is in the folders (spec, state, lineage). A folder without a
    manifest becomes a failed job (its error.json's code, or ``interrupted``) that
    ``POST /jobs/{id}/retry`` resumes. Returns the job ids."""
    registered = []
    known = {row["job_id"] for row in catalog.sql("SELECT job_id FROM jobs")}
    for root in find_job_folders(roots):
        folder = JobFolder(root)
        job, error = folder.job(), folder.error()
        if job["job_id"] in known:  # the catalog's record stands (the service may be running it)
            continue
        complete = folder.complete()
        state = "succeeded" if complete else "failed"
        code = None if complete else (error or {}).get("code", "interrupted")
        message = None if complete else (error or {}).get(
            "message", "the run had not finished when the catalog was rebuilt; retry the job to resume it")
        job_id = catalog.register_job(root, state=state, error=message, error_code=code)
        catalog.save_submission({"job_id": job_id, "name": job["name"], "output": str(root.resolve()),
                                 "spec": json.dumps(job["spec"]), "created_at": job["created_at"],
                                 "idempotency_key": None, "state": state, "error": message, "error_code": code,
                                 "attempts": 0, "submission_id": f"{job_id}-rebuilt"})
        registered.append(job_id)
    return registered


def open_or_rebuild(path: Path, roots: list[Path]) -> tuple[Catalog, str | None]:
    """The catalog at ``path``. A damaged file is moved aside, and a catalog that is missing
    or damaged is rebuilt from the job folders under ``roots``; the message says so."""
    existed = path.exists()
    try:
        catalog = Catalog(path)
    except CatalogDamaged as exc:
        aside = path.with_name(f"{path.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        os.replace(path, aside)
        Path(f"{path}.wal").unlink(missing_ok=True)  # the log of a file that is gone
        catalog = Catalog(path)
        return catalog, _rebuilt(catalog, roots, f"catalog {path} could not be opened ({exc.reason}); moved it to "
                                                 f"{aside}")
    if existed or not find_job_folders(roots):
        return catalog, None
    return catalog, _rebuilt(catalog, roots, f"no catalog at {path}")


def _rebuilt(catalog: Catalog, roots: list[Path], why: str) -> str:
    jobs = rebuild(catalog, roots)
    return f"{why}: rebuilt the catalog from {folders(len(jobs))} under {', '.join(map(str, roots))}"


def folders(n: int) -> str:
    return f"{n} job folder{'' if n == 1 else 's'}"


def why(job: str, doc_id: str, catalog_path: str | Path | None = None) -> dict[str, Any]:
    """The lineage answer for one document (the service calls this too)."""
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.why(job, doc_id)
