"""Incremental dedup against an index vs deduplicating everything again.

A synthetic corpus (``--docs`` documents of ~2 kB random words, as in bench_minhash.py)
with planted near-duplicate clusters (a base plus 1-4 copies, each one to three words
away from its base, spread over the whole id range) is split by id: the lower 90 % is
"old", the upper 10 % "new". Three local jobs (``workers.local.run_stages``, one
``minhash_dedup_v1`` stage, ``survivor: min_id``; or with ``--stage exact_dedup_v1`` one
exact-dedup stage, whose planted copies are verbatim, upper-cased or re-spaced, and whose
survivor is the first in input order, i.e. the lowest id here):

* old: the 90 %, then ``curate index add`` (``workers.dedup_index.add_job``) of its survivors;
* new: the 10 % with ``against: <index>``;
* full: the 100 % at once.

Reported: the removals among the new documents in "new" vs "full" (the count of
documents removed by one and not the other: 0 expected with min_id and the old part
holding the lower ids, as no planted copy chains), and time: score + fit of the stage
(from the job's step markers) and wall time of each job, with the ratio new / full.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_dedup_index.py [--docs 50000] \\
        [--stage exact_dedup_v1]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.dedup_index import add_job  # noqa: E402
from workers.job_folder import JobFolder, step_name  # noqa: E402
from workers.local import run_stages  # noqa: E402


def synthetic(n: int, seed: int = 0, exact: bool = False) -> tuple[list[str], int]:
    """``n`` documents of ~2 kB random words, ~8 % of them planted near-copies of others
    (in random positions; ``exact``: equal after exact dedup's normalisation); returns the
    texts and how many copies were planted."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    bases = n * 92 // 100
    docs = []
    for _ in range(bases):
        words, size = [], 0
        while size < 2000:
            w = rng.choice(vocab)
            words.append(w)
            size += len(w) + 1
        docs.append(words)
    copies = []
    while bases + len(copies) < n:
        base = rng.choice(docs)
        for _ in range(min(rng.randint(1, 4), n - bases - len(copies))):
            words = list(base)
            if exact:
                words = [w.upper() for w in words] if rng.random() < 0.5 else [*words, " "]
            else:
                for _ in range(rng.randint(1, 3)):
                    words[rng.randrange(len(words))] = "zz" + "".join(rng.choice("qxjk") for _ in range(8))
            copies.append(words)
    texts = [" ".join(w) for w in docs + copies]
    rng.shuffle(texts)
    return texts, len(copies)


def stage_seconds(workdir: Path, stage: str) -> float:
    """Score (every unit) + fit of the stage, from the job's step markers."""
    folder = JobFolder(workdir / "job")
    index = next(st["index"] for st in folder.stages() if st["name"] == stage)
    score = sum(folder.read_marker(step_name(index, stage, "score"), u["key"])["seconds"] for u in folder.units())
    return score + folder.read_marker(step_name(index, stage, "fit"))["seconds"]


def timed_run(stage: str, texts: dict[str, str], workdir: Path, job_id: str, **params):
    started = time.perf_counter()
    run = run_stages([(stage, params)], pa.table({"id": list(texts), "text": list(texts.values())}),
                     workdir=workdir, job_id=job_id, unit_rows=10_000)
    return run, time.perf_counter() - started, stage_seconds(workdir, stage)


def removed(run, stage: str) -> dict[str, str]:
    return {r["doc_id"]: r["survivor_id"] for r in run.decisions(stage) if r["decision"] == "drop"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--stage", choices=["minhash_dedup_v1", "exact_dedup_v1"], default="minhash_dedup_v1")
    args = ap.parse_args()
    stage = args.stage
    texts, planted = synthetic(args.docs, exact=stage == "exact_dedup_v1")
    ids = [f"d{i:07d}" for i in range(len(texts))]
    cut = len(texts) * 9 // 10
    old, new = dict(zip(ids[:cut], texts[:cut], strict=True)), dict(zip(ids[cut:], texts[cut:], strict=True))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-index-"))
    try:
        run_stages([stage], pa.table({"id": ["w"], "text": ["warm up the compiled loops " * 3]}))
        a, a_wall, a_stage = timed_run(stage, old, tmp / "old", "old")
        started = time.perf_counter()
        added = add_job(tmp / "index", tmp / "old" / "job")
        add_wall = time.perf_counter() - started
        b, b_wall, b_stage = timed_run(stage, new, tmp / "new", "new", against=str(tmp / "index"))
        full, f_wall, f_stage = timed_run(stage, {**old, **new}, tmp / "full", "full")
        rb, rf = removed(b, stage), {k: v for k, v in removed(full, stage).items() if k in new}
        differ = set(rb) ^ set(rf)
        survivors = sum(rb[k] != rf[k] for k in set(rb) & set(rf))
        union = set(a.output["id"].to_pylist()) | set(b.output["id"].to_pylist())
        mb = sum(len(t) for t in texts) / 1e6
        kind = "exact" if stage == "exact_dedup_v1" else "near"
        print(f"corpus: {len(texts)} docs ({mb:.0f} MB), {planted} planted {kind} copies; old {len(old)} "
              f"(ids < {ids[cut]}), new {len(new)}; index: {added.message} (`index add`: {add_wall:.1f} s)\n")
        print("| job | docs | removed | removed among new | stage score+fit (s) | job wall (s) |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| old (90 %) | {len(old)} | {len(removed(a, stage))} | - | {a_stage:.1f} | {a_wall:.1f} |")
        print(f"| new (10 %) against index | {len(new)} | {len(rb)} | {len(rb)} | {b_stage:.1f} | {b_wall:.1f} |")
        print(f"| full (100 %) | {len(texts)} | {len(removed(full, stage))} | {len(rf)} | {f_stage:.1f} "
              f"| {f_wall:.1f} |")
        print(f"\nremovals among new that differ (new vs full): {len(differ)}; same removal, other survivor: "
              f"{survivors}; old output ∪ new output == full output: {union == set(full.output['id'].to_pylist())}")
        print(f"time ratio new / full: stage score+fit {b_stage / f_stage:.3f}, job wall {b_wall / f_wall:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
