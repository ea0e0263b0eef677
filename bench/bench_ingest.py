"""``curate ingest``: the Arrow column path (this checkout) vs the per-record path it replaced.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_ingest.py [--rounds 3] [--docs 50000]
        [--short-docs 500000]

The old implementation is loaded from git (``git show 5aad8bc:workers/ingest.py``) into a
temporary module, so both run in the same process on the same machine, interleaved
(old, new, old, new, ...); each input's docs/s is its best round (the machine is shared,
the fastest round is the least disturbed). Inputs: (a) the Debian man pages
(``../shared/data/debian/manpages_rendered.jsonl.gz``, 4408 large docs; skipped with a
message when ../shared/data is absent), (b) a generated JSON lines file of ``--docs``
web-like docs (20-300 words, ~0.9 KB) with scalar fields (string, int, float, bool, null)
and (c) ``--short-docs`` generated docs of a few words (titles, sentences; 0 to skip).
The speed-up depends on the size of the docs: what the Arrow path removes is per-record
Python work, while reading (gzip) and writing Parquet (zstd) cost both the same per byte.
Both ingests must give the same rows: the script checks ids and texts (and says whether
every other column is equal too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers import ingest as new_ingest  # noqa: E402

OLD_COMMIT = "5aad8bc"
MANPAGES = ROOT.parent / "shared" / "data" / "debian" / "manpages_rendered.jsonl.gz"
WORDS = ("the", "of", "and", "to", "in", "is", "for", "that", "on", "with", "as", "was", "by", "at", "from", "this",
         "be", "are", "or", "an", "it", "not", "have", "which", "data", "model", "corpus", "filter", "shard", "token",
         "text", "web", "page", "license", "manual", "python", "arrow", "parquet", "json")


def load_old(tmp: Path) -> ModuleType:
    """workers/ingest.py as of OLD_COMMIT, imported as its own module (it imports the same
    workers.atomic and workers.shards as the new one)."""
    try:
        source = subprocess.run(["git", "show", f"{OLD_COMMIT}:workers/ingest.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot load the old ingest from git ({exc})") from None
    path = tmp / f"ingest_{OLD_COMMIT}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def generate(path: Path, docs: int, words: tuple[int, int]) -> Path:
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(docs):
            record = {"id": f"gen-{i:07d}", "url": f"https://example.org/{rng.randrange(10**6)}/{i}",
                      "text": " ".join(rng.choices(WORDS, k=rng.randint(*words))),
                      "n_links": rng.randint(0, 50), "score": round(rng.random(), 4),
                      "english": rng.random() < 0.9, "lang": None if i % 7 else "en"}
            f.write(json.dumps(record) + "\n")
    return path


def timed(module: ModuleType, src: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    module.ingest([str(src)], out)
    return time.perf_counter() - start


def read_out(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=50_000, help="docs in the generated JSON lines file")
    parser.add_argument("--short-docs", type=int, default=500_000, help="docs in the file of short docs (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        old_ingest = load_old(tmp)
        inputs = []
        if MANPAGES.exists():
            inputs.append(("Debian man pages (jsonl.gz)", MANPAGES))
        else:
            print(f"skipping the man pages: {MANPAGES} is absent (../shared/data not here)\n")
        inputs.append(("generated, 20-300 words (jsonl)", generate(tmp / "generated.jsonl", args.docs, (20, 300))))
        if args.short_docs:
            inputs.append(("generated, 5-15 words (jsonl)", generate(tmp / "short.jsonl", args.short_docs, (5, 15))))

        rows, checks = [], []
        for label, src in inputs:
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                times["old"].append(timed(old_ingest, src, tmp / "old"))
                times["new"].append(timed(new_ingest, src, tmp / "new"))
            old_t, new_t = read_out(tmp / "old"), read_out(tmp / "new")
            same = old_t["id"].equals(new_t["id"]) and old_t["text"].equals(new_t["text"])
            checks.append(f"{label}: {old_t.num_rows} vs {new_t.num_rows} rows; ids and texts "
                          f"{'identical' if same else 'DIFFER'}; every column and type "
                          f"{'identical' if old_t.equals(new_t) else 'not identical'}")
            docs = new_t.num_rows
            old_best, new_best = min(times["old"]), min(times["new"])
            rows.append(f"| {label} | {docs} | {old_best:.2f} | {docs / old_best:,.0f} | {new_best:.2f} "
                        f"| {docs / new_best:,.0f} | {old_best / new_best:.1f}x |")

    print(f"best of {args.rounds} interleaved rounds, default --shard-rows (10000)\n")
    print("| input | docs | old s | old docs/s | new s | new docs/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nsame rows (old vs new):")
    print("\n".join(f"- {c}" for c in checks))


if __name__ == "__main__":
    main()
