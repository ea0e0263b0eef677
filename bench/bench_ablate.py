"""`curate ablate` on the web pool: the job with every stage that exists, then the
n-gram and transformer tiers (held-out bits per byte on WikiText-2 valid, curated vs
random vs each stage alone, 3 seeds, the largest budget the pool allows), and the
ablation model's training throughput against a bare torch loop over the same model and
batches, measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_ablate.py [--data ../shared/data]
        [--job runs/web-pool-full]     # reuse a finished job instead of running it (~10 min)
        [--tiers ngram,transformer]    # transformer: ~25 min on 2 cores
        [--throughput-only]

The job and the ablations run through the CLI in subprocesses, as a user runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = [{"stage": "exact_dedup_v1"}, {"stage": "minhash_dedup_v1"}, {"stage": "c4_lines_v1"},
          {"stage": "quality_rules_v1"},
          {"stage": "perplexity_v1",
           "params": {"window": 256, "select": {"mode": "buckets", "keep": ["head", "middle"]}}}]


def curate(*args: str, env: dict) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"curate {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - started


def throughput(config_kwargs: dict, n_tokens: int) -> dict[str, float]:
    """Tokens/s of train_small_lm vs a bare loop (same model, same batches, no scheduler,
    clipping or bookkeeping): what the trainer costs over the model itself."""
    import torch
    from torch.nn import functional as F

    from filters.lm.small_lm import IGNORE, SmallLMConfig, _build_model, _rows, train_small_lm

    config = SmallLMConfig(**config_kwargs)
    stream = np.random.default_rng(0).integers(0, config.vocab_size, n_tokens)
    trained = train_small_lm(stream, config, 0)
    torch.manual_seed(0)
    model = _build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    x, y = _rows(stream, config.context)
    started = time.perf_counter()
    for i in range(0, len(x), config.batch_size):
        logits = model(torch.from_numpy(x[i:i + config.batch_size]))
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size),
                               torch.from_numpy(y[i:i + config.batch_size]).reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bare = n_tokens / (time.perf_counter() - started)
    params = sum(p.numel() for p in model.parameters())
    return {"trainer": trained.tokens_per_second, "bare": bare, "params": params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--job", type=Path, help="a finished job folder to ablate (default: run the recipe)")
    ap.add_argument("--tiers", default="ngram,transformer")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--throughput-only", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("\n| model | params | trainer tok/s | bare torch loop tok/s | trainer ÷ bare |\n|---|---|---|---|---|")
    for label, kw in (("ablation default (2 × 128, ctx 256, batch 4)", {}),
                      ("4 × 256, ctx 256, batch 4", {"n_layer": 4, "d_model": 256})):
        t = throughput(kw, 200_000)
        print(f"| {label} | {t['params'] / 1e6:.2f} M | {t['trainer']:.0f} | {t['bare']:.0f} | "
              f"{t['trainer'] / t['bare']:.2f} |")
    if args.throughput_only:
        return
    evalset = args.data / "quality" / "wikitext-2_valid_articles.jsonl"
    pool = args.data / "web" / "combined_web_pool.parquet"
    if not pool.exists() or not evalset.exists():
        raise SystemExit(f"needs {pool} and {evalset} (../shared/data)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "CURATE_HOME": str(Path(tmp) / "home")}
        job = args.job
        if job is None:
            job = Path(tmp) / "web-pool-full"
            spec = Path(tmp) / "web.json"
            spec.write_text(json.dumps({"name": "web-pool-full", "inputs": [str(pool)], "output": str(job),
                                        "stages": RECIPE}))
            out, wall = curate("run", str(spec), "--no-progress", env=env)
            print(f"\njob: {wall:.0f} s\n{out}")
        for tier in args.tiers.split(","):
            out, wall = curate("ablate", str(job), "--eval", str(evalset), "--model", tier, "--seeds",
                               str(args.seeds), env=env)
            print(f"\n{tier} tier: {wall:.0f} s wall (curate ablate, Ray start-up included)\n")
            print(out[out.index("ablation abl-", out.index("\n\n")):])


if __name__ == "__main__":
    main()
