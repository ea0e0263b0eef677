"""A bucketed fit (``Stage.bucket_by``: MinHash band keys): the grouping and the
verification of candidate pairs as one task per bucket, so no task holds more than one
bucket's keys and no step holds the corpus.

1. The scoring pass hashes each unit's keys into ``fit_buckets`` buckets and writes them to
   one partition file per unit, a row group per bucket (``write_partition``): nothing is
   shuffled through the driver.
2. One task per bucket reads its row groups from every unit's file, groups them by key and
   writes the bucket's candidate pairs (``Stage.bucket_pairs``).
3. One task per unit writes the ``bucket_columns`` of its documents that are in some pair,
   a row group per bucket holding the documents of that bucket's pairs (a document in the
   pairs of several buckets is written once for each). A stage whose pairs need no check
   (exact dedup: equal keys are the verdict) has no such columns and skips this step.
4. One task per bucket reads its row groups of those files, verifies its pairs and writes
   its edges (``Stage.verify_bucket``): it reads its own documents, never the corpus.

The stage's fit then merges the edges into clusters (``view.bucketed``). A pair is a
function of its two documents, so the union of the buckets' edges is the single-node
fit's edge list, and the result is the same.

Every task runs DuckDB under half the per-task memory budget (it spills beyond that) and
first checks what it will hold in Python against the other half: a bucket whose share
would not fit fails at once with a message naming the setting, rather than swapping or
being killed by the kernel mid-way.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from filters.base import ORDER, Bucketed, Stage, sql_list
from filters.registry import get_stage
from workers import atomic
from workers.fit_view import SqlView
from workers.job_folder import JobFolder
from workers.shards import Unit

# Bytes one key row (a MinHash band, key and ord) is taken to need in a bucket task's DuckDB GROUP BY:
# an estimate, not a measurement (18 bytes of data plus the hash table's and the lists'
# overhead). It sizes the buckets; DuckDB spills past its limit, so a low guess costs
# scratch disk, not a failed task. At 10 M, 16.7 M-key buckets ran with a 1 GiB limit.
BYTES_PER_KEY_ROW = 64
MAX_BUCKETS = 4096
DEFAULT_TASK_MEMORY_MB = 2048
# Run ``fn(*args)`` for each tuple of ``calls`` with at most ``memory_mb`` each; returns the
# results in order. Serial in process for ``run_stages``; Ray tasks in a job.
TaskMap = Callable[[Callable[..., dict], list[tuple], int], list[dict]]


class FitBudgetError(ValueError):
    """A bucket task would hold more than the per-task memory budget."""


def serial_map(fn: Callable[..., dict], calls: list[tuple], memory_mb: int) -> list[dict]:
    return [fn(*args) for args in calls]


def doc_key_bytes(stage: Stage) -> int:
    """What one document's key rows take in a bucket task (0: the stage's fit is not bucketed)."""
    if not (stage.bucket_by or stage.regroup_fit):
        return 0
    return stage.bucket_doc_bytes() or stage.keys_per_doc() * BYTES_PER_KEY_ROW


def bucket_count(rows: int, stages: Sequence[Stage], memory_mb: int) -> int:
    """Buckets enough that one bucket's key rows fill at most half of ``memory_mb`` (1: no
    bucketed stage, or the keys fit one task: the single-node fit)."""
    per_doc = max((doc_key_bytes(s) for s in stages), default=0)
    need = rows * per_doc / (memory_mb * 2**20 / 2)
    return min(MAX_BUCKETS, max(1, math.ceil(need)))


def _slices_by_bucket(table: pa.Table, buckets: int) -> list[pa.Table]:
    """A table sorted by its ``bucket`` column, cut into one (maybe empty) slice per bucket."""
    cuts = np.searchsorted(table["bucket"].to_numpy(), np.arange(buckets + 1))
    return [table.slice(lo, hi - lo) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


def partition_keys(stage: Stage, scores: pa.Table, buckets: int) -> list[pa.Table]:
    """A unit's key rows (``Stage.bucket_keys``), one table per bucket."""
    return partition_rows(stage.bucket_keys(scores), buckets)


def partition_rows(rows: pa.Table, buckets: int) -> list[pa.Table]:
    """Key rows, one table per bucket: ``bucket`` = the high 32 bits of the row's ``hash``
    mod ``buckets``."""
    hashes = rows["hash"].to_numpy().astype(np.uint64, copy=False)
    bucket = ((hashes >> np.uint64(32)) % np.uint64(buckets)).astype(np.int32)
    order = np.argsort(bucket, kind="stable")
    rows = rows.drop_columns(["hash"]).take(pa.array(order))
    return _slices_by_bucket(rows.add_column(0, "bucket", pa.array(bucket[order], pa.int32())), buckets)


def write_partition(stage: Stage, scores: pa.Table, buckets: int, path: Path) -> None:
    parts = partition_keys(stage, scores, buckets)
    atomic.write_parquet_groups(parts, parts[0].schema, path)


@contextmanager
def _engine(scratch: Path, memory_mb: int) -> Iterator[SqlView]:
    """DuckDB under half the task's budget (at least the 32 MB it needs to run at all),
    spilling to a folder of its own (removed after)."""
    try:
        with SqlView(scratch, None, f"{max(memory_mb // 2, 32)}MB") as sql:
            yield sql
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _over_budget(what: str, need: int, memory_mb: int) -> str | None:
    if need <= memory_mb * 2**20 / 2:
        return None
    return (f"{what} needs ~{need / 2**20:,.1f} MiB, more than half of execution.fit_task_memory_mb = "
            f"{memory_mb}; raise execution.fit_task_memory_mb, or execution.fit_buckets for a new job folder")


def pairs_task(stage: tuple[str, dict], key_files: list[str], bucket: int, buckets: int, out: str,
               scratch: str, memory_mb: int) -> dict:
    """Step 2: the candidate pairs of one bucket."""
    started = time.perf_counter()
    with _engine(Path(scratch) / f"pairs-{bucket}", memory_mb) as sql:
        source = f"SELECT * EXCLUDE (bucket) FROM read_parquet({sql_list(key_files)}) WHERE bucket = {bucket}"
        rows = sql.sql(f"SELECT count(*) AS n FROM ({source})")["n"][0].as_py()
        error = _over_budget(f"bucket {bucket} of {buckets} ({rows:,} keys)", rows * BYTES_PER_KEY_ROW, memory_mb)
        if error:
            return {"error": error}
        pairs = get_stage(stage[0])(stage[1]).bucket_pairs(sql, source)
    pairs = pairs.append_column("bucket", pa.array(np.full(pairs.num_rows, bucket, np.int32)))
    atomic.write_parquet(pairs, Path(out))
    return {"keys": rows, "pairs": pairs.num_rows, "seconds": time.perf_counter() - started}


def ends_task(stage: tuple[str, dict], unit_index: int, score_file: str, pair_files: list[str], buckets: int,
              out: str, scratch: str, memory_mb: int) -> dict:
    """Step 3: the rows of one unit's documents that are in a candidate pair, by bucket (a
    unit's orders are ``unit_index << 32 | position``)."""
    started = time.perf_counter()
    columns = get_stage(stage[0]).bucket_columns
    lo, hi = unit_index << 32, (unit_index + 1) << 32
    with _engine(Path(scratch) / f"ends-{unit_index}", memory_mb) as sql:
        sql.execute(f"""
            CREATE TEMP TABLE wanted AS SELECT DISTINCT bucket, x AS ord FROM (
                SELECT bucket, unnest([a, b]) AS x FROM read_parquet({sql_list(pair_files)})
            ) WHERE x >= {lo} AND x < {hi}
        """)
        wanted = sql.sql("SELECT count(*) AS n FROM wanted")["n"][0].as_py()
        error = _over_budget(f"unit {unit_index}'s documents in pairs ({wanted:,} by bucket)",
                             round(wanted * _row_bytes([score_file])), memory_mb)
        if error:
            return {"error": error}
        ends = sql.sql(f"""
            SELECT w.bucket, s."{ORDER}" AS ord, {", ".join(f"s.{c}" for c in columns)}
            FROM read_parquet({sql_list([score_file])}) s JOIN wanted w ON s."{ORDER}" = w.ord
            ORDER BY w.bucket, ord
        """)
    if ends.num_rows:  # a unit with none writes nothing (its columns may be untyped)
        atomic.write_parquet_groups(_slices_by_bucket(ends, buckets), ends.schema, Path(out))
    return {"ends": ends.num_rows, "seconds": time.perf_counter() - started}


def verify_task(stage: tuple[str, dict], bucket: int, pair_file: str, end_files: list[str], out: str,
                scratch: str, memory_mb: int) -> dict:
    """Step 4: the verified edges among one bucket's pairs (``end_files`` is empty for a
    stage without ``bucket_columns``)."""
    started = time.perf_counter()
    with _engine(Path(scratch) / f"verify-{bucket}", memory_mb) as sql:
        sql.execute(f"CREATE TEMP TABLE pairs AS SELECT a, b FROM read_parquet({sql_list([pair_file])})")
        ends = None
        held = 0
        if end_files:
            ends = f"SELECT * EXCLUDE (bucket) FROM read_parquet({sql_list(end_files)}) WHERE bucket = {bucket}"
            held = sql.sql(f"SELECT count(*) AS n FROM ({ends})")["n"][0].as_py()
        count = sql.sql("SELECT count(*) AS n FROM pairs")["n"][0].as_py()
        # In Python: the endpoints' rows (at their average uncompressed size) and a few
        # arrays of 8 bytes per pair.
        need = round(held * _row_bytes(end_files)) + count * 48
        error = _over_budget(f"verifying bucket {bucket} ({count:,} pairs, {held:,} documents)", need, memory_mb)
        if error:
            return {"error": error}
        edges = get_stage(stage[0])(stage[1]).verify_bucket(sql, "pairs", ends)
    atomic.write_parquet(edges, Path(out))
    return {"pairs": count, "edges": edges.num_rows, "seconds": time.perf_counter() - started}


def _row_bytes(files: list[str]) -> float:
    metas = [pq.ParquetFile(f).metadata for f in files]
    rows = sum(m.num_rows for m in metas)
    return sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups)) / max(rows, 1)


def _run(map_tasks: TaskMap, fn: Callable[..., dict], calls: list[tuple], memory_mb: int,
         timing: dict[str, list[float]]) -> list[dict]:
    started = time.perf_counter()
    results = map_tasks(fn, calls, memory_mb)
    timing[fn.__name__.removesuffix("_task")] = [round(time.perf_counter() - started, 3),
                                                  round(sum(r.get("seconds", 0.0) for r in results), 3)]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise FitBudgetError(errors[0] if len(errors) == 1 else f"{len(errors)} fit tasks over budget; first: "
                             f"{errors[0]}")
    return results


def run_buckets(folder: JobFolder, units: list[Unit], index: int, stage: Stage, phase: str, buckets: int,
                map_tasks: TaskMap, memory_mb: int) -> tuple[Bucketed, dict]:
    """Steps 2-4 over the partition files the scoring pass wrote; returns the files for
    the fit and a summary (keys, pairs, edges, slowest task) for its marker."""
    root = folder.bucket_dir(index, stage.name)
    for step in ("pairs", "ends", "edges", "scratch"):
        shutil.rmtree(root / step, ignore_errors=True)  # a killed fit's leftovers
    scratch = str(root / "scratch")
    spec = (stage.name, stage.params.model_dump(mode="json"))
    key_files = [str(folder.bucket_keys(index, stage.name, u.key)) for u in units]
    pair_files = [str(root / "pairs" / f"b{b:05d}.parquet") for b in range(buckets)]
    timing: dict[str, list[float]] = {}  # step -> [wall seconds, seconds summed over its tasks]
    pairs = _run(map_tasks, pairs_task, [(spec, key_files, b, buckets, pair_files[b], scratch, memory_mb)
                                         for b in range(buckets)], memory_mb, timing)
    edges: list[dict] = []
    end_files: list[str] = []
    edge_files: list[str] = []
    busy = [b for b in range(buckets) if pairs[b]["pairs"]]
    if busy and stage.bucket_columns:  # a stage that verifies pairs reads their documents' rows
        end_files = [str(root / "ends" / f"{u.key}.parquet") for u in units]
        ends = _run(map_tasks, ends_task, [(spec, u.index, str(folder.scores(index, stage.name, u.key, phase)),
                                            pair_files, buckets, end_files[n], scratch, memory_mb)
                                           for n, u in enumerate(units)], memory_mb, timing)
        end_files = [f for f, r in zip(end_files, ends, strict=True) if r["ends"]]
    if busy:
        edge_files = [str(root / "edges" / f"b{b:05d}.parquet") for b in busy]
        edges = _run(map_tasks, verify_task, [(spec, b, pair_files[b], end_files, out, scratch, memory_mb)
                                              for b, out in zip(busy, edge_files, strict=True)], memory_mb, timing)
    summary = {"buckets": buckets, "keys": sum(r["keys"] for r in pairs), "pairs": sum(r["pairs"] for r in pairs),
               "edges": sum(r["edges"] for r in edges),
               "largest_bucket_keys": max(r["keys"] for r in pairs),
               "slowest_task_seconds": round(max(r["seconds"] for r in pairs + edges), 3),
               "steps_wall_and_task_seconds": timing}
    return Bucketed([Path(f) for f in edge_files], [Path(f) for f in end_files]), summary
