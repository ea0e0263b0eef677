"""``minhash_dedup_v1`` at scale: N synthetic ~2 kB documents (1% planted near-copies)
through the whole stage on a local Ray cluster; wall time per step and peak memory.

    python bench/bench_minhash_scale.py [--docs 1000000] [--shards 20] [--workdir /tmp]

Memory is sampled every 0.2 s from /proc: the largest single process RSS, and the
machine's memory in use (MemTotal − MemAvailable) above what it was before the job —
the driver, the Ray workers and DuckDB together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.job import run_job  # noqa: E402
from workers.passes import connect_ray  # noqa: E402
from workers.spec import parse_spec  # noqa: E402


def generate(folder: Path, docs: int, shards: int, seed: int = 0, exact: float = 0.0) -> int:
    """Shards of ~2 kB random pages, 1 % of them near copies of an earlier page (3 words
    edited), and an ``exact`` fraction verbatim copies of an earlier page; returns the
    number of planted copies."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(30000)])
    per = docs // shards
    planted = 0
    for s in range(shards):
        words = vocab[rng.integers(0, len(vocab), size=(per, 330))]
        texts = [" ".join(row) for row in words]
        for i in rng.choice(np.arange(1, per), size=per // 100, replace=False):
            src = words[rng.integers(0, i)].copy()
            src[rng.choice(330, 3, replace=False)] = "edited"
            texts[i] = " ".join(src)
            planted += 1
        if exact:  # drawn after the near copies, so exact=0 gives the same shards as before
            for i in rng.choice(np.arange(1, per), size=int(per * exact), replace=False):
                texts[i] = texts[rng.integers(0, i)]
                planted += 1
        pq.write_table(pa.table({"id": [f"s{s:03d}-{i:06d}" for i in range(per)], "text": texts}),
                       folder / f"s{s:03d}.parquet")
    return planted


def _used() -> int:
    """Machine memory in use (MemTotal − MemAvailable), bytes, from /proc/meminfo."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def _largest_rss() -> int:
    page = 4096
    best = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                best = max(best, int((entry / "statm").read_text().split()[1]) * page)
            except (OSError, IndexError, ValueError):
                continue
    return best


class MemorySampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = _used()
        self.peak_used = 0
        self.peak_rss = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak_used = max(self.peak_used, _used() - self.base)
            self.peak_rss = max(self.peak_rss, _largest_rss())
            time.sleep(0.2)


def measured(run):
    """``run()`` with the memory sampler on: its result, its wall seconds and the sampler."""
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    try:
        result = run()
    finally:
        sampler.running = False
        sampler.join()
    return result, time.perf_counter() - started, sampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate-scale-", dir=args.workdir))
    try:
        (work / "in").mkdir()
        t = time.perf_counter()
        planted = generate(work / "in", args.docs, args.shards)
        print(f"generated {args.docs} docs ({planted} planted near-copies) in {time.perf_counter() - t:.0f} s",
              flush=True)
        connect_ray()
        spec = parse_spec({"name": "scale", "inputs": [str(work / "in" / "*.parquet")], "output": str(work / "out"),
                           "stages": [{"stage": "minhash_dedup_v1"}]})
        manifest, wall, sampler = measured(lambda: run_job(spec, progress=False))
        done = work / "out" / "_done"
        fit = json.loads((done / "01-minhash_dedup_v1.fit.json").read_text())
        f = manifest["funnel"][1]
        print("| docs | planted | removed | wall s | fit s | docs/s | peak machine memory above start | "
              "largest process RSS |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.docs:,} | {planted:,} | {f['dropped']:,} | {wall:.0f} | {fit['seconds']:.1f} "
              f"| {args.docs / wall:,.0f} | {sampler.peak_used / 2**30:.2f} GiB | {sampler.peak_rss / 2**30:.2f} GiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
