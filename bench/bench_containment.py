"""``minhash_dedup_v1`` containment mode on planted partial copies: recall by true containment,
removals below 0.5, removals among unplanted documents, fit and total seconds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_containment.py [--plants 300]

Corpus: the web pool of ../shared/data (1,907 real pages) with wikitext-2 paragraphs (60–150
words) pasted into pages at least 3× longer, at target containment levels 0.3 … 1.0, either a
contiguous prefix of the paragraph or the whole paragraph with evenly spaced word
substitutions; each paragraph is also a document of its own (the short copy A, which the
mode should remove). Without ../shared/data, synthetic pages of random words (same layout).
The true C(A ⊆ B) is measured after planting over the stage's own normalised 5-gram sets.

Rows: the stage through ``workers.local.run_stages`` (score → fit → select in units of
500 documents, as a job runs them) in Jaccard mode and with ``containment = 0.8``; and
datasketch's MinHashLSHEnsemble (128 permutations, 16 partitions, threshold 0.8) over the
same 5-gram sets as a baseline (in memory, one process; its time includes building the
MinHashes), with its default (bands, rows) weights and with weights that favour recall,
its candidates used unverified (A goes when any document of more n-grams comes back) and
checked with the stage's exact rule.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.minhash import MinHashParams, normalise, shingle_hashes  # noqa: E402
from workers.local import run_stages  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WEB = DATA / "web" / "combined_web_pool.parquet"
WIKI = DATA / "quality" / "wikitext-2_valid_articles.jsonl"
LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
T = 0.8
STAGE = "minhash_dedup_v1"


def sources(rng: random.Random) -> tuple[list[str], list[str], list[str], str]:
    """(page ids, page texts, paragraphs, where they come from)."""
    if WEB.exists() and WIKI.exists():
        pool = pq.read_table(WEB, columns=["id", "text"])
        ids = [f"{i}:{d}" for i, d in enumerate(pool["id"].to_pylist())]  # unique whatever the pool's ids
        texts = [t or "" for t in pool["text"].to_pylist()]
        paras = [p for line in WIKI.read_text().splitlines() for p in json.loads(line)["text"].split("\n")
                 if 60 <= len(p.split()) <= 150]
        return ids, texts, paras, "real: web pool + wikitext-2 paragraphs"
    print(f"note: {DATA} absent, using synthetic text", file=sys.stderr)
    vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(50, 1500))) for _ in range(2000)]
    paras = [" ".join(rng.choices(vocab, k=rng.randint(60, 150))) for _ in range(1500)]
    return [f"web{i}" for i in range(len(texts))], texts, paras, "synthetic random words"


def plant(rng: random.Random, texts: list[str], paras: list[str], plants: int) -> list[tuple[int, str]]:
    """Pastes into ``texts`` in place; returns (host index, the short copy A) per plant."""
    rng.shuffle(paras)
    hosts = list(range(len(texts)))
    rng.shuffle(hosts)
    out = []
    for n, para in enumerate(paras):
        if len(out) == plants:
            break
        words = para.split()
        host = next((h for h in hosts if len(texts[h].split()) >= 3 * len(words)), None)
        if host is None:
            continue
        hosts.remove(host)
        c = LEVELS[len(out) % len(LEVELS)]
        if n % 2:  # a contiguous prefix holding a fraction c of the 5-grams
            pasted = words[:4 + round(c * (len(words) - 4))]
        else:  # the whole paragraph, every k-th word substituted (each kills up to five 5-grams)
            edits = round((1 - c) * (len(words) - 4) / 5)
            pasted = list(words)
            for i in np.linspace(2, len(words) - 3, edits).astype(int):
                pasted[i] = "edit" + "".join(chr(97 + int(d)) for d in f"{n}q{i}" if d != "q")  # no digits
        page = texts[host].split()
        at = rng.randint(0, len(page))
        texts[host] = " ".join(page[:at] + pasted + page[at:])
        out.append((host, para))
    return out


def shingles(text: str) -> np.ndarray:
    return shingle_hashes(normalise(text, MinHashParams()).split(), 5, {})


def containment(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b, assume_unique=True)) / len(a) if len(a) else 0.0


def exhaustive(sets: list[np.ndarray], skip: set[int]) -> set[int]:
    """Every document (not in ``skip``) with C ≥ T in one that ranks above it, by counting
    shared n-grams over a full inverted index: the ground truth, no sampling."""
    postings = defaultdict(list)
    for i, s in enumerate(sets):
        if i not in skip:
            for h in s.tolist():
                postings[h].append(i)
    out = set()
    for a, s in enumerate(sets):
        if a in skip or not len(s):
            continue
        shared = Counter(b for h in s.tolist() for b in postings[h] if b != a)
        if any(n >= T * len(s) and (len(sets[b]) > len(s) or (len(sets[b]) == len(s) and b < a))
               for b, n in shared.items()):
            out.add(a)
    return out


def minhashes(sets: list[np.ndarray]) -> tuple[list, float]:
    """datasketch MinHashes (128 permutations) of the stage's 5-gram hashes (low 32 bits)."""
    from datasketch import MinHash

    started = time.perf_counter()
    out = []
    for s in sets:
        m = MinHash(num_perm=128, hashfunc=lambda x: x)
        m.update_batch((s & np.uint64(0xFFFFFFFF)).tolist())
        out.append(m)
    return out, time.perf_counter() - started


def ensemble(sets: list[np.ndarray], hashes: list, weights: tuple[float, float],
             verify: bool) -> tuple[dict[int, int], float]:
    """What MinHashLSHEnsemble would remove (index → the candidate it goes for: one of more
    n-grams, or as many and earlier in input order), and the seconds index + queries took."""
    from datasketch import MinHashLSHEnsemble

    started = time.perf_counter()
    live = [i for i, s in enumerate(sets) if len(s)]
    index = MinHashLSHEnsemble(threshold=T, num_perm=128, num_part=16, weights=weights)
    index.index((i, hashes[i], len(sets[i])) for i in live)
    removed = {}
    for a in live:
        for b in index.query(hashes[a], len(sets[a])):
            ranks_above = len(sets[b]) > len(sets[a]) or (len(sets[b]) == len(sets[a]) and b < a)
            if ranks_above and (not verify or containment(sets[a], sets[b]) >= T):
                removed[a] = b
                break
    return removed, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plants", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(0)
    page_ids, texts, paras, origin = sources(rng)
    planted = plant(rng, texts, paras, args.plants)
    ids = page_ids + [f"plant{n:04d}" for n in range(len(planted))]
    texts = texts + [a for _, a in planted]
    sets = [shingles(t) for t in texts]
    plant_at = {len(page_ids) + n: host for n, (host, _) in enumerate(planted)}
    true_c = {a: containment(sets[a], sets[h]) for a, h in plant_at.items()}
    hi = [a for a, c in true_c.items() if c >= T]
    mid = [a for a, c in true_c.items() if 0.5 <= c < T]
    lo = [a for a, c in true_c.items() if c < 0.5]
    print(f"{origin}: {len(page_ids)} pages, {len(planted)} planted short copies "
          f"(true C >= {T}: {len(hi)}, 0.5-{T}: {len(mid)}, < 0.5: {len(lo)}); {len(texts)} documents")
    docs = pa.table({"id": ids, "text": texts})
    index_of = {d: i for i, d in enumerate(ids)}

    def row(mode: str, removed: dict[int, tuple[str, int]], fit_s: float | None, total_s: float) -> str:
        """``removed``: index → (reason, the document it was removed for)."""
        right = sum(removed[a][1] == plant_at[a] for a in hi if a in removed)
        contained = [i for i, (reason, _) in removed.items() if i not in plant_at and reason == "minhash.contained"]
        # An unplanted document removed as contained is a false removal when its exact
        # containment in the document it was removed for is below the cut-off.
        false = sum(containment(sets[i], sets[removed[i][1]]) < T for i in contained)
        fit = "-" if fit_s is None else f"{fit_s:.2f}"
        return (f"| {mode} | {sum(a in removed for a in hi) / len(hi):.3f} ({right}/{len(hi)} right container) "
                f"| {sum(a in removed for a in mid) / max(1, len(mid)):.3f} | {sum(a in removed for a in lo)} "
                f"| {len(contained)} / {false} | {fit} | {total_s:.2f} |")

    print(f"| mode | recall C >= {T} | recall 0.5 <= C < {T} | removed C < 0.5 | unplanted removed as contained "
          "/ false | fit s | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    checks: list[str] = []
    for mode, params in (("stage, jaccard (containment=None)", {}), (f"stage, containment={T}", {"containment": T})):
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            run = run_stages([(STAGE, params)], docs, unit_rows=500, workdir=work)
            total = time.perf_counter() - started
            fit = json.loads((Path(work) / "job" / "_done" / f"01-{STAGE}.fit.json").read_text())["seconds"]
        removed = {index_of[r["doc_id"]]: (r["reason"], index_of[r["survivor_id"]])
                   for r in run.decisions(STAGE) if r["decision"] == "drop"}
        jaccard_dups = sum(reason == "minhash.duplicate" for reason, _ in removed.values())
        print(row(mode, removed, fit, total), flush=True)
        checks.append(f"{mode}: {jaccard_dups} Jaccard duplicates removed as minhash.duplicate")
        if params:
            skip = {i for i, (reason, _) in removed.items() if reason == "minhash.duplicate"}
            truth, found = exhaustive(sets, skip), {i for i, (r, _) in removed.items() if r == "minhash.contained"}
            checks.append(f"exhaustive check of containment={T} over all {len(sets) - len(skip)} documents the Jaccard "
                          f"step keeps: {len(truth)} contained at C >= {T}, the stage removed {len(found)}, missed "
                          f"{len(truth - found)}, extra {len(found - truth)}")
    try:
        hashes, build = minhashes(sets)
    except ImportError:
        print("| MinHashLSHEnsemble | datasketch not installed | | | | | |")
        hashes = []
    # (false-positive, false-negative) weights of its (bands, rows) choice: the default
    # (0.5, 0.5), and one that favours recall. It has no Jaccard step, so its unplanted
    # removals include the later copy of each Jaccard duplicate pair.
    for weights, verify in (((0.5, 0.5), True), ((0.05, 0.95), False), ((0.05, 0.95), True)) if hashes else ():
        found, seconds = ensemble(sets, hashes, weights, verify)
        print(row(f"MinHashLSHEnsemble weights={weights}, {'exact check' if verify else 'unverified'}",
                  {a: ("minhash.contained", b) for a, b in found.items()}, None, build + seconds), flush=True)
    print("", *checks, sep="\n")


if __name__ == "__main__":
    main()
