"""Throughput of the curation spine (input check + exact_dedup_v1 + quality_rules_v1).

For each corpus, in the same run:
  * baseline: plain pyarrow read + write of the same shards (the floor any Parquet
    pipeline pays);
  * stages in-process: the three stages through the public in-process runner
    (``workers.local.run_stages``: one Python process, no Ray; the same steps and
    lineage files as a job, one work unit), what the stage code costs on one core;
  * spine on Ray: ``run_job`` end to end on a local Ray cluster already started
    (Ray Data passes, atomic writes, markers, lineage files, manifest).

    python bench/bench_spine.py [--reps 3] [--shards 4] [--scale 5] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.ingest import ingest  # noqa: E402
from workers.job import run_job  # noqa: E402
from workers.local import run_stages  # noqa: E402
from workers.passes import connect_ray  # noqa: E402
from workers.spec import parse_spec  # noqa: E402

STAGES = [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}]


def prepare(data: Path, work: Path, shards: int, scale: int) -> dict[str, list[Path]]:
    corpora = {}
    for name, src in (("web pool", data / "web" / "combined_web_pool.parquet"),
                      ("debian man pages", data / "debian" / "manpages_rendered.jsonl.gz")):
        if not src.exists():
            print(f"skipping {name}: {src} absent", file=sys.stderr)
            continue
        rows = pq.read_metadata(src).num_rows if src.suffix == ".parquet" else sum(1 for _ in _lines(src))
        out = work / name.replace(" ", "_")
        ingest([str(src)], out, shard_rows=-(-rows // shards))
        corpora[name] = sorted(out.glob("part-*.parquet"))
    if "debian man pages" in corpora and scale > 1:
        corpora[f"man pages ×{scale}"] = replicate(corpora["debian man pages"], scale, work / "scaled")
    return corpora


def replicate(files: list[Path], times: int, dest: Path) -> list[Path]:
    """``times`` copies of each doc, each made unique (id and a trailing marker) so
    exact dedup keeps them: a larger corpus with the man pages' text statistics."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        t = pq.read_table(f, columns=["id", "text"])
        parts = [pa.table({"id": pc.binary_join_element_wise(t["id"], f"#{k}", ""),
                           "text": pc.binary_join_element_wise(t["text"], f" (copy {k})", "")})
                 for k in range(times)]
        pq.write_table(pa.concat_tables(parts), dest / f.name, compression="zstd")
        out.append(dest / f.name)
    return out


def _lines(path: Path):
    import gzip

    with gzip.open(path, "rb") as f:
        yield from f


def pyarrow_copy(files: list[Path], dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for f in files:
        pq.write_table(pq.read_table(f), dest / f.name, compression="zstd")
    return time.perf_counter() - start


def stages_in_process(files: list[Path]) -> float:
    """The same stages through the public in-process runner (one process, no Ray, the
    same steps and lineage files as a job)."""
    table = pa.concat_tables(pq.read_table(f, columns=["id", "text"]) for f in files)
    start = time.perf_counter()
    run_stages([(s["stage"], s.get("params", {})) for s in STAGES], table)
    return time.perf_counter() - start


def spine(files: list[Path], out: Path) -> tuple[float, int]:
    spec = parse_spec({"name": "bench", "inputs": [str(f) for f in files], "output": str(out), "stages": STAGES})
    start = time.perf_counter()
    manifest = run_job(spec, progress=False, overwrite=True)
    return time.perf_counter() - start, manifest["output"]["rows"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--scale", type=int, default=5, help="also run the man pages replicated this many times")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        corpora = prepare(args.data, work, args.shards, args.scale)
        t0 = time.perf_counter()
        connect_ray()
        import ray

        print(f"ray cluster start/connect: {time.perf_counter() - t0:.1f} s (not counted below); "
              f"CPUs: {ray.cluster_resources().get('CPU')}")
        header = ("| corpus | docs | text MB | shards | pyarrow read+write docs/s | stages in-process docs/s "
                  "| spine on Ray docs/s | spine s | spine ÷ in-process | spine ÷ pyarrow |")
        print(header)
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, files in corpora.items():
            docs = sum(pq.read_metadata(f).num_rows for f in files)
            text_mb = sum(pc.sum(pc.binary_length(pq.read_table(f, columns=["text"])["text"])).as_py()
                          for f in files) / 2**20
            base = statistics.median(pyarrow_copy(files, work / "copy" / str(i)) for i in range(args.reps))
            inproc = statistics.median(stages_in_process(files) for _ in range(args.reps))
            runs = [spine(files, work / "run" / str(i)) for i in range(args.reps)]
            wall = statistics.median(r[0] for r in runs)
            print(f"| {name} | {docs} | {text_mb:.1f} | {len(files)} | {docs / base:,.0f} | {docs / inproc:,.0f} "
                  f"| {docs / wall:,.0f} | {wall:.2f} | {inproc / wall:.2f}× | {base / wall:.2f}× |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
