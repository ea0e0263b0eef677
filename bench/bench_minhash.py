"""MinHash signature throughput: ``minhash_dedup_v1`` vs datasketch, same documents, same run.

* baseline: datasketch ``MinHash(num_perm=K).update_batch`` once per document on the
  document's 5-gram strings (its default sha1 hashing) — datasketch's per-document path;
* ours, signatures only: ``filters.minhash.signatures`` over the same documents' 5-gram
  hash sets (a compiled numba loop);
* ours, whole score step: normalise + shingle + signatures + band keys
  (``MinHashDedupV1.score``), on 1 core and on all cores (one process per core);
* rensa (a Rust MinHash, ``RMinHash``), signatures only on the same 5-gram strings, and
  end to end from the raw text with the same normalisation and Python 5-gram shingling.

Shingling for the signatures-only columns is done beforehand and not timed. A second
table splits our score step on one core into its parts. The numba loops are compiled (or
loaded from their cache) before anything is timed; the first call's cost is printed apart,
measured in fresh processes: once with an empty cache (compiling), once with the cache.

    python bench/bench_minhash.py [--docs 5000] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.minhash import (  # noqa: E402
    MinHashDedupV1,
    MinHashParams,
    _signatures,
    _unique_ngrams,
    band_keys,
    normalise,
    normalised_buffers,
    permutations,
    shingle_hashes,
    signatures,
)
from filters.word_ngrams import word_hashes  # noqa: E402


def synthetic(n: int, seed: int = 0) -> list[str]:
    """~2 kB documents of random English-like words."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    docs = []
    for _ in range(n):
        words, size = [], 0
        while size < 2000:
            w = rng.choice(vocab)
            words.append(w)
            size += len(w) + 1
        docs.append(" ".join(words))
    return docs


def _score(texts: list[str]) -> int:
    MinHashDedupV1().score(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    return len(texts)


def measure(name: str, texts: list[str], cores: int) -> str:
    from datasketch import MinHash

    p = MinHashParams()
    k = p.bands * p.rows
    words = [normalise(t, p).split() for t in texts]
    grams = [[" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)] for w in words]
    keep = [i for i, g in enumerate(grams) if g]
    grams = [grams[i] for i in keep]
    cache: dict[str, int] = {}
    sets = [shingle_hashes(words[i], 5, cache) for i in keep]

    t = time.perf_counter()
    for g in grams:
        m = MinHash(num_perm=k, seed=1)
        m.update_batch(g)
    base = len(grams) / (time.perf_counter() - t)

    t = time.perf_counter()
    signatures(sets, k, p.seed)
    ours = len(sets) / (time.perf_counter() - t)

    t = time.perf_counter()
    _score(texts)
    full1 = len(texts) / (time.perf_counter() - t)

    rensa_sig = rensa_full = float("nan")
    try:
        from rensa import RMinHash
    except ImportError:
        print("(rensa not installed: pip install rensa; its columns are empty)", file=sys.stderr)
    else:
        t = time.perf_counter()
        for g in grams:
            RMinHash(num_perm=k, seed=1).update(g)
        rensa_sig = len(grams) / (time.perf_counter() - t)
        t = time.perf_counter()
        for text in texts:
            w = normalise(text, p).split()
            RMinHash(num_perm=k, seed=1).update([" ".join(w[i:i + 5]) for i in range(len(w) - 4)])
        rensa_full = len(texts) / (time.perf_counter() - t)

    parts = [texts[i::cores] for i in range(cores)]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_score, [p[:50] for p in parts]))  # warm the workers (imports, tables)
        t = time.perf_counter()
        list(pool.map(_score, parts))
        full_all = len(texts) / (time.perf_counter() - t)
    return (f"| {name} | {len(texts)} | {k} | {base:,.0f} | {ours:,.0f} | {ours / base:.1f}× | {rensa_sig:,.0f} "
            f"| {full1:,.0f} | {rensa_full:,.0f} | {full_all:,.0f} ({cores} cores) |")


def parts(name: str, texts: list[str]) -> str:
    """Seconds per part of ``MinHashDedupV1.score`` on one core, as it runs them."""
    p = MinHashParams()
    k = p.bands * p.rows
    t0 = time.perf_counter()
    buffers = normalised_buffers(texts, p)
    t1 = time.perf_counter()
    flat, offsets = _unique_ngrams(*word_hashes(*buffers), p.ngram)
    t2 = time.perf_counter()
    sig = _signatures(flat, offsets, *permutations(k, p.seed))[np.diff(offsets) > 0]
    t3 = time.perf_counter()
    band_keys(sig, p.bands, p.rows)
    t4 = time.perf_counter()
    total = t4 - t0
    return (f"| {name} | {len(texts)} | {t1 - t0:.3f} | {t2 - t1:.3f} | {t3 - t2:.3f} | {t4 - t3:.3f} "
            f"| {total:.3f} | {len(texts) / total:,.0f} |")


FIRST_CALL = """
import time
import pyarrow as pa
from filters.minhash import MinHashDedupV1
t0 = time.perf_counter()
MinHashDedupV1().score(pa.table({"id": ["a"], "text": ["one two three four five six"]}))
print(time.perf_counter() - t0)
"""


def first_call() -> str:
    """Seconds of the first ``score`` call in a fresh process (the import not counted):
    with an empty numba cache (every loop compiled) and with the cache that leaves."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        cold, warm = (float(subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True,
                                           capture_output=True, text=True).stdout) for _ in range(2))
    return (f"First call of the score step in a fresh process (numba; not in the tables): {cold:.2f} s compiling "
            f"into an empty cache, {warm:.2f} s loading the cache.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--docs", type=int, default=5000, help="synthetic documents")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(first_call() + "\n")
    _score(synthetic(10))  # compile or load the numba loops before anything is timed
    print("| corpus | docs | perms | datasketch update_batch docs/s (1 core) | ours signatures docs/s (1 core) "
          "| ours ÷ datasketch | rensa signatures docs/s (1 core) | ours full score docs/s (1 core) "
          "| rensa from raw text docs/s (1 core) | ours full score docs/s (all cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    corpora = []
    man = args.data / "debian" / "manpages_rendered.jsonl.gz"
    if man.exists():
        with gzip.open(man, "rt", encoding="utf-8") as f:
            corpora.append(("debian man pages", [json.loads(line)["text"] for line in f]))
    else:
        print(f"(skipped the man pages: {man} absent)", file=sys.stderr)
    corpora.append(("synthetic 2 kB", synthetic(args.docs)))
    for name, texts in corpora:
        print(measure(name, texts, cores))
    print("\nWhere the score step's time goes (seconds, 1 core):\n")
    print("| corpus | docs | normalise | split + 5-gram hashes + sorted unique per document | signatures "
          "| band keys | total | docs/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, texts in corpora:
        print(parts(name, texts))


if __name__ == "__main__":
    main()
