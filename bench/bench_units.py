"""Work units smaller than a shard: one 2,000-document Parquet file through perplexity_v1
with 2 actors, wall time of this checkout vs another checkout (e.g. the code before
work units, where a pass mapped over whole shards and one shard kept one actor busy).

    python bench/bench_units.py --baseline /tmp/baseline     # a `git worktree` of the older commit

Both runs use `curate run` (the CLI) in a subprocess on the same freshly built shard,
one after the other, each starting its own local Ray cluster. Prints wall time, the
number of work units, and the summed scoring seconds of the stage (busy time across
actors): with one unit, busy ≈ wall; with units spread over 2 actors, busy ≈ 2 × wall.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MANPAGES = ROOT.parent / "shared" / "data" / "debian" / "manpages_rendered.jsonl.gz"


def build_shard(path: Path, docs: int) -> str:
    """The first ``docs`` English man pages; without the shared data, the demo corpus."""
    if MANPAGES.exists():
        rows = []
        with gzip.open(MANPAGES, "rt") as f:
            for line in f:
                r = json.loads(line)
                if r.get("lang", "en") in ("en", "C", None) and r["text"].strip():
                    rows.append({"id": r["id"], "text": r["text"]})
                if len(rows) == docs:
                    break
        source = f"{MANPAGES.name} (first {docs} English pages)"
    else:
        sys.path.insert(0, str(ROOT))
        from workers.demo_corpus import build_demo_corpus

        raw, _ = build_demo_corpus(path.parent / "demo.jsonl", max_docs=docs * 2)
        rows = [json.loads(line) for line in raw.read_text().splitlines()]
        rows = [{"id": r["id"], "text": r["text"]} for r in rows if r.get("text") and r["text"].strip()][:docs]
        source = "the demo corpus"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return source


def run(checkout: Path, shard: Path, out: Path, window: int) -> dict:
    spec = {"name": "units", "inputs": [str(shard)], "output": str(out),
            "stages": [{"stage": "perplexity_v1", "params": {"window": window, "num_actors": 2}}]}
    spec_path = out.parent / f"{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(checkout), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "CURATE_HOME": str(out.parent / f"{out.name}-home")}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "service.cli", "run", str(spec_path), "--no-progress"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: curate run failed:\n{proc.stderr[-3000:]}")
    stats = [json.loads(p.read_text()) for p in (out / "stages" / "01-perplexity_v1" / "stats").glob("*.json")]
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "units": len(stats), "busy": sum(s["score_seconds"] or 0 for s in stats),
            "sha": [f["sha256"] for f in manifest["files"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, required=True, help="another checkout to compare with")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--window", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "in" / "one.parquet"
        source = build_shard(shard, args.docs)
        print(f"one shard of {args.docs} documents from {source}; perplexity_v1 window {args.window}, 2 actors")
        results = {"baseline": run(args.baseline.resolve(), shard, Path(tmp) / "base", args.window),
                   "this checkout": run(ROOT, shard, Path(tmp) / "new", args.window)}
    print("| code | work units | wall s | stage busy s (all actors) | busy ÷ wall |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['units']} | {r['wall']:.1f} | {r['busy']:.1f} | {r['busy'] / r['wall']:.2f} |")
    speedup = results["baseline"]["wall"] / results["this checkout"]["wall"]
    same = results["baseline"]["sha"] == results["this checkout"]["sha"]
    print(f"\nspeed-up: {speedup:.2f}x; identical output sha256: {same}")


if __name__ == "__main__":
    main()
