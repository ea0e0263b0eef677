"""A MinHash duplicate cluster's members and their pairwise Jaccard, read from a job folder
(for the REST API and the dashboard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from filters.base import ID
from filters.minhash import MinHashDedupV1, jaccard
from workers.job_folder import JobFolder


def cluster_members(output: str | Path, cluster_id: str) -> dict:
    folder = JobFolder(output)
    stage = next(s for s in folder.stages() if s["name"] == MinHashDedupV1.name)
    fit = pq.read_table(folder.fit(stage["index"], stage["name"]))
    members = fit.filter(pc.equal(fit["cluster_id"], cluster_id))
    if members.num_rows == 0:
        raise KeyError(f"no cluster {cluster_id!r} in {output}")
    ids = members[ID].to_pylist()
    files = [str(folder.scores(stage["index"], stage["name"], u["key"])) for u in folder.units()]
    rows = pads.dataset(files).to_table(columns=[ID, "shingles"], filter=pc.field(ID).isin(ids)).to_pylist()
    sets = {r[ID]: np.array(r["shingles"], dtype=np.uint64) for r in rows}
    order = sorted(ids, key=lambda i: (i != cluster_id, i))
    pairs = [{"a": a, "b": b, "jaccard": jaccard(sets[a], sets[b])}
             for n, a in enumerate(order) for b in order[n + 1:]]
    return {"cluster_id": cluster_id, "survivor_id": cluster_id, "members": order, "pairs": pairs}
