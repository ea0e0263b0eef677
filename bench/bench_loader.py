"""`curate.loader`'s ``iter_batches`` vs ``pyarrow.dataset`` scanning the same files and
column in the same run: rows/s and MB/s of text, for one reader in file order, shuffled,
and one of 4 ranks.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_loader.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.loader import CuratedDataset  # noqa: E402


def make_job(folder: Path, rows: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("etaoinshrdlu"), rng.integers(2, 9))) for _ in range(5000)])
    files = []
    per = rows // shards
    for s in range(shards):
        texts = [" ".join(words[rng.integers(0, len(words), 80)]) for _ in range(per)]
        path = folder / "data" / f"{s:05d}-s{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{s}-{i}" for i in range(per)], "text": texts}), path,
                       compression="zstd", row_group_size=64_000)
        files.append({"path": str(path.relative_to(folder)), "rows": per, "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source": f"s{s}"})
    (folder / "manifest.json").write_text(json.dumps({"job_id": "bench", "files": files}))


def consume(batches) -> tuple[int, int, float]:
    started = time.perf_counter()
    rows = size = 0
    for batch in batches:
        rows += batch.num_rows
        size += pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0
    return rows, size, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        make_job(folder, args.rows, args.shards)
        started = time.perf_counter()
        data = CuratedDataset(folder)  # verifies every shard's sha256 and rows
        verify = time.perf_counter() - started
        files = data.data_files()
        runs = {
            "pyarrow.dataset scan, text column (baseline)":
                lambda: ds.dataset(files, format="parquet").to_batches(columns=["text"], batch_size=1024),
            "iter_batches, file order": lambda: data.iter_batches(1024, ["text"], shuffle=False),
            "iter_batches, shuffled (buffer 8192)": lambda: data.iter_batches(1024, ["text"], seed=0),
        }
        # Round-robin, best of --repeats: the machine is shared, so every reader sees the same
        # stretches of load rather than one reader getting a quiet minute.
        trials: dict[str, list] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, make in runs.items():
                trials[name].append(consume(make()))
        results = {name: min(t, key=lambda r: r[2]) for name, t in trials.items()}
        rank_rows, rank_bytes, rank_s = min((consume(data.iter_batches(1024, ["text"], rank=1, world_size=4))
                                             for _ in range(args.repeats)), key=lambda r: r[2])
        base = results["pyarrow.dataset scan, text column (baseline)"]
        print(f"{args.rows:,} rows in {args.shards} shards; verification (sha256 of every shard) took {verify:.2f} s;"
              f" best of {args.repeats}, round-robin\n")
        print("| reader | rows | rows/s | MB/s of text | vs pyarrow.dataset |")
        print("|---|---|---|---|---|")
        for name, (rows, size, seconds) in results.items():
            print(f"| {name} | {rows:,} | {rows / seconds:,.0f} | {size / seconds / 1e6:,.0f} | "
                  f"{(rows / seconds) / (base[0] / base[2]):.2f}x |")
        print(f"| iter_batches, shuffled, rank 1 of 4 | {rank_rows:,} | {rank_rows / rank_s:,.0f} | "
              f"{rank_bytes / rank_s / 1e6:,.0f} | (a quarter of the rows) |")


if __name__ == "__main__":
    main()
