"""``curate index add|show``: publish the survivors of finished jobs' ``minhash_dedup_v1``
stage to a versioned MinHash index, which a later job names in ``against:`` to remove its
near-duplicates of already curated documents without deduplicating everything again. A job
that ran ``exact_dedup_v1`` (with or without MinHash) adds its survivors' text hashes, for
that stage's ``against:`` (exact copies, short documents included).

The layout (and its reader) is in ``filters/minhash_index.py``; this module is its only
writer. Adding is explicit, never automatic, so an index only ever holds curated data:
the documents the *whole* job kept (a row with decision ``keep`` at the job's last
stage), with the stage's stored scores (``band_keys``, ``shingles``, ``signature``,
``n_shingles``).

A new version is the parent's parts (hard links; a copy where links fail) plus one new
part, written in ``.vNNNNNN.tmp-*`` and renamed into place, then ``CURRENT`` is replaced
(temp file + ``os.replace``). Adders serialise on ``INDEX_DIR/.lock`` (``flock``): each
reads CURRENT under the lock, so two adds of different jobs give two versions, the second
holding both jobs (no lost update). Under the lock, temporaries of a killed add and
versions newer than CURRENT (renamed, but CURRENT never pointed at them) are removed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.minhash_index import (
    CURRENT,
    EXACT_MATCH_PARAMS,
    INDEX_JSON,
    MATCH_PARAMS,
    MinHashIndexError,
    check_params,
    current_version,
    version_name,
)
from workers import atomic
from workers.job_folder import WRITE_STEP, JobFolder

STAGE = "minhash_dedup_v1"
EXACT_STAGE = "exact_dedup_v1"
LOCK = ".lock"
TMP_MARK = ".tmp-"
PART_SCHEMA = pa.schema([
    ("ord", pa.int64()), ("id", pa.string()), ("job_id", pa.string()), ("n_shingles", pa.int64()),
    ("shingles", pa.list_(pa.uint64())), ("signature", pa.list_(pa.uint32())), ("band_keys", pa.list_(pa.uint64())),
])

HASH_SCHEMA = pa.schema([("text_hash", pa.string()), ("id", pa.string()), ("job_id", pa.string())])


@dataclass(frozen=True)
class AddResult:
    added: bool
    version: str
    job_id: str
    rows: int  # documents of this job in the index
    message: str


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks: adders queue, they never interleave
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version_number(name: str) -> int | None:
    return int(name[1:]) if len(name) == 7 and name[0] == "v" and name[1:].isdigit() else None


def clean(root: Path) -> list[str]:
    """Under the lock: remove what a killed add left (``.vNNNNNN.tmp-*`` folders, and version
    folders newer than CURRENT, which no reader was ever pointed at). Returns their names."""
    cur = current_version(root)
    live = (_version_number(cur.version) or 0) if cur else 0
    removed = []
    for p in sorted(root.iterdir()):
        n = _version_number(p.name)
        torn = p.name.startswith((".v", f".{CURRENT}")) and TMP_MARK in p.name
        if torn or (n is not None and p.is_dir() and n > live):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
    return removed


def _finished(folder: JobFolder) -> bool:
    """A job with a manifest, or (a local ``run_stages`` job) every output shard written."""
    if folder.complete():
        return True
    shards = {u["key"].rsplit(".", 1)[0] for u in folder.units()}
    return bool(shards) and all(folder.done(WRITE_STEP, s) for s in shards)


def _stage_named(folder: JobFolder, name: str) -> dict | None:
    found = [st for st in folder.stages() if st["name"] == name]
    if len(found) > 1:
        raise MinHashIndexError(f"job {folder.job()['job_id']} runs {name} {len(found)} times; which survivors "
                                "to index is ambiguous")
    return found[0] if found else None


def _kept_scores(folder: JobFolder, stage: dict) -> Iterator[pa.Table]:
    """Per work unit, the stage's scores of the documents the whole job kept (documents a
    later transform created have no scores at the stage, so none here)."""
    last = folder.stages()[-1]
    for unit in folder.units():
        scores_path = folder.scores(stage["index"], stage["name"], unit["key"])
        decisions_path = folder.decisions(last["index"], last["name"], unit["key"])
        if not scores_path.exists() or not decisions_path.exists():
            continue
        decisions = pq.read_table(decisions_path, columns=["doc_id", "decision"])
        kept = decisions.filter(pc.equal(decisions["decision"], "keep"))["doc_id"]
        scores = pq.read_table(scores_path)
        if scores.num_rows:
            yield scores.filter(pc.is_in(scores["id"], value_set=kept.combine_chunks()))


def _hash_rows(folder: JobFolder, stage: dict, job_id: str) -> Iterator[pa.Table]:
    for rows in _kept_scores(folder, stage):
        yield pa.table([rows["text_hash"].cast(pa.string()), rows["id"].cast(pa.string()),
                        pa.array([job_id] * rows.num_rows, pa.string())], schema=HASH_SCHEMA)


def _survivor_rows(folder: JobFolder, stage: dict, job_id: str) -> Iterator[pa.Table]:
    """Per work unit, the MinHash scores of the documents the whole job kept."""
    for scores in _kept_scores(folder, stage):
        rows = scores.filter(pc.invert(scores["too_short_to_compare"]))
        if rows.num_rows:
            yield pa.table({
                "id": rows["id"].cast(pa.string()),
                "job_id": pa.array([job_id] * rows.num_rows, pa.string()),
                "n_shingles": rows["n_shingles"].cast(pa.int64()),
                "shingles": rows["shingles"].cast(pa.list_(pa.uint64())),
                "signature": rows["signature"].cast(pa.list_(pa.uint32())),
                "band_keys": rows["band_keys"].cast(pa.list_(pa.uint64())),
            })


def _write_hashes(path: Path, tables: Iterator[pa.Table]) -> int:
    rows = 0
    with pq.ParquetWriter(path, HASH_SCHEMA, compression="zstd") as writer:
        for t in tables:
            writer.write_table(t, row_group_size=256_000)
            rows += t.num_rows
    return rows


def _write_part(path: Path, tables: Iterator[pa.Table]) -> int:
    rows = 0
    with pq.ParquetWriter(path, PART_SCHEMA, compression="zstd") as writer:
        for t in tables:
            ords = pa.array(range(rows, rows + t.num_rows), pa.int64())
            writer.write_table(pa.table([ords, *t.columns], schema=PART_SCHEMA), row_group_size=64_000)
            rows += t.num_rows
    return rows


def _new_part(path: Path, write: Callable[[Path, Iterator[pa.Table]], int], tables: Iterator[pa.Table],
              job_id: str) -> dict:
    """Write one part of a new version; its entry in index.json."""
    rows = write(path, tables)
    return {"file": path.name, "job_id": job_id, "rows": rows, "sha256": atomic.sha256_file(path)}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported: a copy is as good
        shutil.copy2(src, dst)


def add_job(index_dir: str | Path, job_dir: str | Path) -> AddResult:
    """Add the survivors of the finished job in ``job_dir`` to the index (a new version).
    A job already in the index is not added again (``added`` False, with a message),
    except for a kind of part its record lacks (its exact-dedup hashes, if it was added
    before indexes held them)."""
    root, folder = Path(index_dir), JobFolder(job_dir)
    if not folder.started():
        raise MinHashIndexError(f"{folder.root} is not a curate job folder (no job.json)")
    job = folder.job()
    job_id = job["job_id"]
    if not _finished(folder):
        raise MinHashIndexError(f"job {job_id} has not finished; only a finished job's survivors can be indexed")
    stage = _stage_named(folder, STAGE)
    exact = _stage_named(folder, EXACT_STAGE)
    if stage is None and exact is None:
        raise MinHashIndexError(f"job {job_id} has no {STAGE} or {EXACT_STAGE} stage: nothing to add")
    with _locked(root):
        clean(root)
        cur = current_version(root)
        before = cur.info if cur else {}
        params, exact_params = before.get("params"), before.get("exact_params")
        if stage is not None and params:
            check_params(params, stage["params"], f"job {job_id}")
        if exact is not None and exact_params:
            check_params(exact_params, exact["params"], f"job {job_id}", EXACT_STAGE, EXACT_MATCH_PARAMS)
        jobs = list(before.get("jobs", []))
        known = next((j for j in jobs if j["job_id"] == job_id), None)
        if known is not None:
            # Already in: only what its record lacks is added (the hashes of a job added before
            # indexes held them); a job is never added twice.
            stage = stage if "stage_index" not in known else None
            exact = exact if "hash_rows" not in known else None
            if stage is None and exact is None:
                version = before["version"]
                return AddResult(False, version, job_id, known.get("rows") or known.get("hash_rows", 0),
                                 f"job {job_id} is already in {root} ({version}); nothing added")
        number = (_version_number(cur.version) or 0) + 1 if cur else 1
        name = version_name(number)
        tmp = root / f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            parts, hash_parts = list(before.get("parts", [])), list(before.get("hash_parts", []))
            for p in parts + hash_parts:
                _link(root / cur.version / p["file"], tmp / p["file"])  # type: ignore[union-attr]
            now = datetime.now(UTC).isoformat(timespec="seconds")
            record = dict(known) if known else {"job_id": job_id, "name": job.get("name"),
                                                 "output": str(folder.root.resolve()), "rows": 0,
                                                 "added_in": name, "added_at": now}
            if stage is not None:
                parts.append(_new_part(tmp / f"part-{number:06d}.parquet", _write_part,
                                       _survivor_rows(folder, stage, job_id), job_id))
                params = params or {k: stage["params"].get(k) for k in MATCH_PARAMS}
                record |= {"rows": parts[-1]["rows"], "stage_index": stage["index"]}
            if exact is not None:
                hash_parts.append(_new_part(tmp / f"hashes-{number:06d}.parquet", _write_hashes,
                                            _hash_rows(folder, exact, job_id), job_id))
                exact_params = exact_params or {k: exact["params"].get(k) for k in EXACT_MATCH_PARAMS}
                record |= {"hash_rows": hash_parts[-1]["rows"], "exact_stage_index": exact["index"]}
            jobs = [record if j is known else j for j in jobs] if known else [*jobs, record]
            info = {"version": name, "parent": cur.version if cur else None, "created_at": now, "params": params,
                    "jobs": jobs, "parts": parts,
                    "rows": sum(p["rows"] for p in parts)}
            if hash_parts:
                info |= {"exact_params": exact_params, "hash_parts": hash_parts,
                         "hash_rows": sum(p["rows"] for p in hash_parts)}
            atomic.write_json(info, tmp / INDEX_JSON)
            os.rename(tmp, root / name)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        atomic.write_text(name + "\n", root / CURRENT)
    message = f"added {record['rows']} documents of job {job_id} to {root} as {name}" if stage is not None else \
        f"added job {job_id} to {root} as {name}"
    if exact is not None:
        message += f" ({record['hash_rows']} exact-dedup text hashes)"
    return AddResult(True, name, job_id, record["rows"] if stage is not None else record["hash_rows"], message)


def versions(index_dir: str | Path) -> list[dict]:
    """index.json of every version from CURRENT back to the first, newest first."""
    root = Path(index_dir)
    cur = current_version(root)
    if cur is None:
        raise MinHashIndexError(f"{root} is not a MinHash index (no {CURRENT}); create one with `curate index add`")
    out, info = [], cur.info
    while True:
        out.append(info)
        if not info.get("parent") or not (root / info["parent"] / INDEX_JSON).exists():
            return out
        info = atomic.read_json(root / info["parent"] / INDEX_JSON)


def format_index(index_dir: str | Path) -> str:
    found = versions(index_dir)
    live = found[0]
    lines = [f"index {Path(index_dir)}: current {live['version']}, {len(live['jobs'])} jobs, {live['rows']} documents",
             "params: " + (" ".join(f"{k}={live['params'][k]}" for k in MATCH_PARAMS) if live["params"] else
                           "none (no job of it ran minhash_dedup_v1)")]
    if live.get("exact_params"):
        lines.append(f"exact-dedup hashes: {live['hash_rows']} documents, params: "
                     + " ".join(f"{k}={live['exact_params'][k]}" for k in EXACT_MATCH_PARAMS))
    lines.append(f"{'version':<9} {'parent':<9} {'jobs':>4} {'rows':>10}  added")
    for v in found:
        new = [j for j in v["jobs"] if j.get("added_in") == v["version"]]
        added = ", ".join(f"{j['job_id']} ({j['rows']} rows)" for j in new)
        lines.append(f"{v['version']:<9} {v['parent'] or '-':<9} {len(v['jobs']):>4} {v['rows']:>10}  {added}")
    lines.append("jobs:")
    lines += [f"  {j['job_id']:<32} " + (f"{j['rows']:>10} rows  " if "stage_index" in j else f"{'no MinHash':>15}  ")
              + (f"{j['hash_rows']:>10} hashes  " if "hash_rows" in j else f"{'no hashes':>17}  ") + j["output"]
              for j in live["jobs"]]
    return "\n".join(lines)
