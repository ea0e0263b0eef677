"""`curate export`'s tokens/s vs the tokenizer's own ``encode_batch`` over the same texts,
in the same run. The export reads the job's Parquet shards, encodes, writes the token
shards and hashes them; the baseline only encodes texts already in memory.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_export.py \
        [--tokenizer smollm2-135m] [--copies 8]

Texts: ../shared/data/web/combined_web_pool.parquet (real web text) repeated --copies
times; without it, generated sentences.
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
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.loader import CuratedDataset  # noqa: E402
from filters.lm.token_encoder import load_encoder  # noqa: E402
from workers.export_tokens import export_tokens  # noqa: E402

WEB = ROOT.parent / "shared" / "data" / "web" / "combined_web_pool.parquet"


def texts(copies: int) -> tuple[list[str], str]:
    if WEB.exists():
        base = pq.read_table(WEB, columns=["text"]).column("text").to_pylist()
        return base * copies, f"{WEB.name} × {copies}"
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), rng.integers(2, 10))) for _ in range(20000)]
    return [" ".join(rng.choice(words, 400)) + "." for _ in range(2000 * copies)], "generated text"


def make_job(folder: Path, docs: list[str], shards: int) -> None:
    files = []
    per = -(-len(docs) // shards)
    for s in range(shards):
        part = docs[s * per: (s + 1) * per]
        path = folder / "data" / f"{s:05d}-s{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{s}-{i}" for i in range(len(part))], "text": part}), path,
                       compression="zstd", row_group_size=4096)
        files.append({"path": str(path.relative_to(folder)), "rows": len(part), "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps({"job_id": "bench", "files": files}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    docs, origin = texts(args.copies)
    encoder = load_encoder(args.tokenizer)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        make_job(Path(tmp) / "job", docs, args.shards)
        data = CuratedDataset(Path(tmp) / "job")
        trials: dict[str, list[tuple[int, float]]] = {"encode_batch": [], "npy": [], "megatron": []}
        for r in range(args.repeats):  # round-robin: each contender sees the same stretches of load
            started = time.perf_counter()
            tokens = sum(len(e.ids) + 1 for e in encoder.tokenizer.encode_batch(docs, add_special_tokens=False))
            trials["encode_batch"].append((tokens, time.perf_counter() - started))
            for fmt in ("npy", "megatron"):
                started = time.perf_counter()
                manifest = export_tokens(data, Path(tmp) / f"{fmt}-{r}", encoder, fmt)
                trials[fmt].append((manifest["tokens"], time.perf_counter() - started))
    best = {name: min(t, key=lambda x: x[1]) for name, t in trials.items()}
    base = best["encode_batch"][0] / best["encode_batch"][1]
    text_mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"{len(docs):,} documents ({text_mb:,.0f} MB of text, {origin}) in {args.shards} shards; tokenizer "
          f"{args.tokenizer} (vocabulary {encoder.vocab_size:,}); best of {args.repeats}\n")
    print("| what | tokens | seconds | tokens/s | vs encode_batch |")
    print("|---|---:|---:|---:|---:|")
    names = {"encode_batch": "tokenizers `encode_batch`, texts in memory (baseline)",
             "npy": "`curate export --format npy` (read, encode, write, hash)",
             "megatron": "`curate export --format megatron` (read, encode, write, hash)"}
    for name, (tokens, seconds) in best.items():
        print(f"| {names[name]} | {tokens:,} | {seconds:.2f} | {tokens / seconds:,.0f} | "
              f"{tokens / seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
