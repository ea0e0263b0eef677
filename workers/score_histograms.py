"""Histograms of a stage's stored scores, binned in DuckDB over the score files (never
loaded into memory or a browser), for the dashboard's distribution charts.

The bins span the 0.5th to 99.5th percentile, so one outlier does not squash the chart;
how many values fall below and above is reported with the bins.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from workers.job_folder import JobFolder
from workers.planner import score_phases

SKIP = {"id", "row", "order"}
NUMERIC = re.compile(r"BOOLEAN|U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL(\(\d+,\s*\d+\))?")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def score_files(folder: JobFolder, index: int, name: str, phase: str, shard: int | None) -> list[Path]:
    units = [u["key"] for u in folder.units() if shard is None or u["shard"] == shard]
    paths = [folder.scores(index, name, key, phase) for key in units]
    return [p for p in paths if p.exists()]


def histograms(output: str | Path, stage_index: int, *, bins: int = 40, shard: int | None = None) -> list[dict]:
    """One histogram per numeric score of the stage's last scoring phase (for a transform:
    its recorded scores), then per number only its lineage has (e.g. MinHash's Jaccards):
    ``score``, ``n``, ``lo``, ``hi``, ``edges`` (bins + 1), ``counts``,
    ``below``, ``above``, ``nulls`` (empty or not finite, e.g. an infinite perplexity);
    ``shard`` (an input shard's index) restricts it."""
    from filters.registry import get_stage

    folder = JobFolder(output)
    record = folder.stage(stage_index)
    cls = get_stage(record["name"])
    phase = score_phases(cls(cls.Params.model_validate(record["params"])))[-1] if cls.kind == "filter" else "score"
    files = score_files(folder, stage_index, record["name"], phase, shard)
    if not files:
        return []
    con = duckdb.connect()
    out = []
    source = f"read_parquet([{', '.join(_quote(str(p)) for p in files)}], union_by_name = true)"
    columns = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    numeric = [c for c, t, *_ in columns if c not in SKIP and NUMERIC.fullmatch(t)]
    for column in numeric:
        out.append(_histogram(con, source, f'CAST("{column}" AS DOUBLE)', column, bins))
    # Facts select adds to lineage only (a duplicate's Jaccard to its survivor, a cluster's quota)
    units = [u["key"] for u in folder.units() if shard is None or u["shard"] == shard]
    decisions = [str(p) for p in (folder.decisions(stage_index, record["name"], key) for key in units) if p.exists()]
    if decisions:
        lineage = f"read_parquet([{', '.join(_quote(p) for p in decisions)}], union_by_name = true)"
        keys = [k for (k,) in con.execute(f"SELECT DISTINCT unnest(map_keys(scores)) AS k FROM {lineage} "
                                          "ORDER BY k").fetchall() if k not in numeric]
        for key in keys:
            out.append(_histogram(con, lineage, f"scores[{_quote(key)}]", key, bins))
    con.close()
    return [h for h in out if h is not None]


def _histogram(con: duckdb.DuckDBPyConnection, source: str, value: str, name: str, bins: int) -> dict | None:
    v = value
    finite = f"FILTER (WHERE isfinite({v}))"
    n, nulls, lo, hi, low, high = con.execute(
        f"SELECT count({v}) {finite}, count(*) - count({v}) {finite}, quantile_cont({v}, 0.005) {finite}, "
        f"quantile_cont({v}, 0.995) {finite}, min({v}) {finite}, max({v}) {finite} FROM {source}").fetchone()
    if not n:
        return None
    if n < 1000 or hi <= lo:  # few values, or one value dominating the percentiles: the full range
        lo, hi = low, high
    if hi <= lo:  # one value: a single bin around it
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    rows = con.execute(
        f"SELECT CASE WHEN {v} < ? THEN -1 WHEN {v} > ? THEN ? ELSE least(floor(({v} - ?) / ?), ? - 1) END AS b, "
        f"count(*) FROM {source} WHERE isfinite({v}) GROUP BY b", [lo, hi, bins, lo, width, bins]).fetchall()
    counts = [0] * bins
    below = above = 0
    for b, count in rows:
        if b < 0:
            below = count
        elif b >= bins:
            above = count
        else:
            counts[int(b)] = count
    return {"score": name, "n": n, "nulls": nulls, "lo": lo, "hi": hi, "below": below, "above": above,
            "edges": [lo + k * width for k in range(bins + 1)], "counts": counts}
