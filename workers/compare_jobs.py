"""Diff two curation runs: which documents one job kept and the other dropped, grouped by
the stage and reason that dropped them and by input shard, computed in DuckDB over the
two jobs' lineage files (documents are matched by id).

A document's outcome in a job is "dropped" at the first stage that dropped it, else
"kept"; a document only one job saw is counted apart.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from workers.job_folder import JobFolder

OUTCOME = """
SELECT doc_id, any_value(shard) AS shard, bool_or(decision = 'drop') AS dropped,
       arg_min(stage, CASE WHEN decision = 'drop' THEN stage_index END) AS stage,
       arg_min(reason, CASE WHEN decision = 'drop' THEN stage_index END) AS reason
FROM read_parquet({files}, union_by_name = true)
WHERE NOT (change IS NOT DISTINCT FROM 'created' AND decision = 'drop')  -- a rejected attempt is no document
GROUP BY doc_id
"""


def _files(output: str | Path) -> list[str]:
    folder = JobFolder(output)
    return sorted(str(p) for p in folder.root.glob("stages/*/decisions/*.parquet"))


def compare(output_a: str | Path, output_b: str | Path, *, examples: int = 5, groups: int = 50) -> dict:
    """``summary`` (both kept, both dropped, kept only by a / b, seen only by a / b) and, for
    each direction, the groups (stage, reason, shard) that dropped what the other kept."""
    files_a, files_b = _files(output_a), _files(output_b)
    if not files_a or not files_b:
        return {"summary": None, "a_kept_b_dropped": [], "b_kept_a_dropped": []}
    con = duckdb.connect()
    con.execute(f"CREATE TEMP TABLE a AS {OUTCOME.format(files='$files')}", {"files": files_a})
    con.execute(f"CREATE TEMP TABLE b AS {OUTCOME.format(files='$files')}", {"files": files_b})
    summary = con.execute("""
        SELECT count(*) FILTER (WHERE NOT a.dropped AND NOT b.dropped),
               count(*) FILTER (WHERE a.dropped AND b.dropped),
               count(*) FILTER (WHERE NOT a.dropped AND b.dropped),
               count(*) FILTER (WHERE a.dropped AND NOT b.dropped),
               (SELECT count(*) FROM a ANTI JOIN b USING (doc_id)),
               (SELECT count(*) FROM b ANTI JOIN a USING (doc_id))
        FROM a JOIN b USING (doc_id)""").fetchone()
    keys = ("both_kept", "both_dropped", "a_kept_b_dropped", "b_kept_a_dropped", "only_in_a", "only_in_b")

    def groups_of(keeper: str, dropper: str) -> list[dict]:
        rows = con.execute(f"""
            SELECT {dropper}.stage, {dropper}.reason, {dropper}.shard, count(*) AS n,
                   min(doc_id, {examples}) AS docs
            FROM a JOIN b USING (doc_id)
            WHERE NOT {keeper}.dropped AND {dropper}.dropped
            GROUP BY ALL ORDER BY n DESC, 1, 2, 3 LIMIT {groups}""").fetchall()
        return [{"stage": s, "reason": r, "shard": sh, "count": n, "examples": docs} for s, r, sh, n, docs in rows]

    result = {"summary": dict(zip(keys, summary, strict=True)), "a_kept_b_dropped": groups_of("a", "b"),
              "b_kept_a_dropped": groups_of("b", "a")}
    con.close()
    return result
