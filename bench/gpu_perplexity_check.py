"""GPU check of the transformers perplexity backend (run on a machine with CUDA).

1. Agreement: a tiny random Llama scored on the CPU and on the GPU gives the same NLL.
2. Throughput: a model with SmolLM2-135M's architecture (its config.json and tokenizer,
   random weights: speed does not depend on the weights) scores documents of random
   words on the GPU in float32 and bfloat16, and on the CPU, with the scorer the stage uses.

    python bench/gpu_perplexity_check.py --smol-dir DIR_WITH_config.json_AND_tokenizer.json [--docs 512]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.lm.hf_backend import TransformersScorer  # noqa: E402


def texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["the", "river", "city", "of", "and", "a", "history", "built", "stone", "bridge", "people", "in",
             "was", "during", "century", "museum", "north", "government", "music", "school", "played", "team"]
    return [" ".join(rng.choice(vocab) for _ in range(words)) + "." for _ in range(n)]


def scorer(folder, device, dtype="float32", batch_tokens=16384, window=512):
    return TransformersScorer(str(folder), window=window, mode="head", stride=window // 2, max_windows=None,
                              n_threads=None, batch_tokens=batch_tokens, device=device, dtype=dtype)


def main() -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--smol-dir", required=True)
    ap.add_argument("--docs", type=int, default=512)
    args = ap.parse_args()
    print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    tmp = Path(tempfile.mkdtemp())
    tok = transformers.AutoTokenizer.from_pretrained(args.smol_dir)
    tok.save_pretrained(tmp / "tiny")
    tiny_cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(tiny_cfg).save_pretrained(tmp / "tiny")
    docs = texts(64, 120)
    cpu = scorer(tmp / "tiny", "cpu").score(docs)
    gpu = scorer(tmp / "tiny", "cuda").score(docs)
    worst = max(abs(a.nll_nats / b.nll_nats - 1) for a, b in zip(cpu, gpu, strict=True))
    print(f"agreement: {len(docs)} docs, max relative NLL difference CPU vs GPU (float32) = {worst:.2e}")
    assert worst < 1e-3 and [a.tokens for a in cpu] == [b.tokens for b in gpu]

    tok.save_pretrained(tmp / "smol")
    config = transformers.AutoConfig.from_pretrained(args.smol_dir)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp / "smol")
    docs = texts(args.docs, 600, seed=1)
    rows = []
    for device, dtype, n in (("cuda", "float32", args.docs), ("cuda", "bfloat16", args.docs), ("cpu", "float32", 32)):
        s = scorer(tmp / "smol", device, dtype, batch_tokens=16384 if device == "cuda" else 2048)
        s.score(docs[:8])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = s.score(docs[:n])
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        tokens = sum(r.tokens for r in out)
        rows.append((device, dtype, n, tokens, seconds))
    print("\n| device | dtype | docs | tokens | seconds | tokens/s |\n|---|---|---:|---:|---:|---:|")
    for device, dtype, n, tokens, seconds in rows:
        print(f"| {device} | {dtype} | {n} | {tokens} | {seconds:.2f} | {tokens / seconds:,.0f} |")


if __name__ == "__main__":
    main()
