"""The arms of an ablation, read from a finished job folder (no document is rescored):

- ``curated``: the job's final selection (its output shards, created documents included);
- ``random``: the job's whole input pool; each seed draws its own random selection;
- ``only:<NN>-<stage>``: the input pool with that one stage's stored decisions applied —
  its drops removed and, for a transform, the documents it saw replaced by what it wrote.
  Stages run in sequence, so a stage never saw what an earlier stage dropped; those
  documents stay in its arm (there is no decision to apply). The arm therefore shows
  what the stage removed *in this job*, its marginal effect. A transform's text for a
  document it saw is what it wrote, which includes any earlier transform's edits.

The built-in input check (stage 0) gets no arm, and the pool leaves out the empty
documents it drops: they hold no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from workers.job_folder import JobFolder
from workers.lineage import CREATED, DROPPED


class ArmError(ValueError):
    """The job folder cannot give arms (not a job, not finished, files missing)."""


@dataclass
class Arm:
    name: str
    kind: str  # curated | random | stage
    ids: list[str]
    texts: list[str]
    stage: str | None = None
    note: str = ""
    removed_contaminated: int = 0
    tokens: list = field(default_factory=list, repr=False)  # per document, filled by the runner


def _read_dir(folder: Path, columns: list[str] | None) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise ArmError(f"{folder} holds no Parquet files; was the job folder moved or partly deleted?")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def _pool(folder: JobFolder, text_column: str) -> tuple[list[str], list[str]]:
    """Every input document (id, original text) in input order, from the input check's lineage."""
    first = folder.stages()[0]
    lineage = _read_dir(folder.stage_dir(first["index"], first["name"]) / "decisions",
                        ["doc_id", "shard", "unit", "row", "stage_index", "decision"])
    # the input check drops only empty documents: no text, and no separator token either
    rows = sorted((r for r in lineage.to_pylist() if r["decision"] != DROPPED), key=lambda r: (r["shard"], r["row"]))
    for shard in folder.job()["inputs"]:
        fs, path = fsspec.core.url_to_fs(shard["path"])
        if not fs.exists(path):
            raise ArmError(f"input shard {shard['path']} of {folder.root} is gone (moved or deleted?)")
    texts = folder.texts(rows, text_column)  # a null text is an empty document
    return [r["doc_id"] for r in rows], [t or "" for t in texts]


def _stage_arm(folder: JobFolder, stage: dict, pool_ids: list[str], pool_texts: list[str]) -> Arm:
    index, name = stage["index"], stage["name"]
    base = folder.stage_dir(index, name)
    decisions = _read_dir(base / "decisions", ["doc_id", "decision", "change"])
    label = f"only:{index:02d}-{name}"
    if stage["kind"] != "transform":
        dropped = {d for d, k in zip(decisions["doc_id"].to_pylist(), decisions["decision"].to_pylist(), strict=True)
                   if k == DROPPED}
        keep = [k for k, d in enumerate(pool_ids) if d not in dropped]
        return Arm(label, "stage", [pool_ids[k] for k in keep], [pool_texts[k] for k in keep], name,
                   f"input pool minus the {len(dropped)} documents {name} dropped")
    changes = decisions["change"].to_pylist()
    seen = {d for d, c in zip(decisions["doc_id"].to_pylist(), changes, strict=True) if c != CREATED}
    made = {d for d, c in zip(decisions["doc_id"].to_pylist(), changes, strict=True) if c == CREATED}
    version = _read_dir(base / "docs", ["id", "text", "parent_id"]).to_pylist()
    written = {r["id"]: r["text"] or "" for r in version}
    ids, texts = [], []
    for d, t in zip(pool_ids, pool_texts, strict=True):
        if d not in seen:
            ids.append(d)
            texts.append(t)
        elif d in written:
            ids.append(d)
            texts.append(written[d])
    created = [r for r in version if r["id"] in made]  # not documents earlier transforms created
    ids += [r["id"] for r in created]
    texts += [r["text"] or "" for r in created]
    return Arm(label, "stage", ids, texts, name,
               f"input pool with {name}'s output in place of the {len(seen)} documents it saw")


def build_arms(output: str | Path) -> list[Arm]:
    folder = JobFolder(output)
    if not folder.started():
        raise ArmError(f"{folder.root} is not a curate job folder (no job.json)")
    if not folder.complete():
        raise ArmError(f"job in {folder.root} has not finished (no manifest.json): run it to the end first")
    text_column = folder.job()["spec"]["columns"]["text"]
    pool_ids, pool_texts = _pool(folder, text_column)
    id_column = folder.job()["spec"]["columns"]["id"]
    final = _read_dir(folder.data_dir, None)
    ids = final[id_column].to_pylist() if id_column in final.column_names else [
        f"output:{k}" for k in range(final.num_rows)]  # an input without ids: output rows have none either
    arms = [Arm("curated", "curated", ids, [t or "" for t in final[text_column].to_pylist()],
                note="the job's output shards"),
            Arm("random", "random", pool_ids, pool_texts, note="a random selection of the input pool per seed")]
    arms += [_stage_arm(folder, st, pool_ids, pool_texts) for st in folder.stages() if st["index"] > 0]
    return arms
