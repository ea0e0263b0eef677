"""perplexity_v1 throughput: the stage on Ray vs the raw backend library, same documents, same run.

For each backend (transformers, llama.cpp; bundled SmolLM2-135M):

* raw: the library alone in this process, on all cores — llama-cpp-python ``Llama.eval`` of
  ``[BOS] + first W tokens`` with ``logits_all`` then a numpy log-softmax; transformers one
  forward pass per document then ``log_softmax``/``gather``. Tokenisation is timed too.
* stage: a real ``curate`` job (Ray local cluster, Parquet in/out, lineage) with 1 actor × 2
  threads and 2 actors × 1 thread. "in-actor" is tokens / (summed score-step seconds /
  actors), the steady state; "end to end" divides by the whole job's wall time, actor
  start-up and model load included.

Documents: the wikitext-2 validation articles (``../shared/data/quality``) repeated to
``--docs``, or, without shared data, the demo corpus's longest docstrings.

    python bench/bench_perplexity.py [--docs 96] [--window 256] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from filters.lm.models import SMOLLM2, resolve_model  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "quality" / "wikitext-2_valid_articles.jsonl"


def documents(n: int) -> tuple[list[str], str]:
    if WIKITEXT.exists():
        texts = [json.loads(line)["text"] for line in WIKITEXT.open()]
        source = "wikitext-2 valid articles"
    else:
        from workers.demo_corpus import build_demo_corpus

        path = Path(tempfile.mkdtemp()) / "demo.jsonl"
        build_demo_corpus(path, max_docs=3000)
        texts = sorted((json.loads(line).get("text") or "" for line in path.open()), key=len)[-200:]
        source = "demo corpus (longest docs)"
    return [texts[i % len(texts)] for i in range(n)], source


def raw_llama_cpp(window: int, threads: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(resolve_model(SMOLLM2)), n_ctx=window + 1, n_batch=window + 1,
                          n_ubatch=window + 1, logits_all=True, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    return lambda texts: _llama_cpp_nll(llm, texts, window)


def _llama_cpp_nll(llm, texts: list[str], window: int) -> int:
    tokens = 0
    for text in texts:
        seq = [llm.token_bos(), *llm.tokenize(text.encode(), add_bos=False)[:window]]
        llm.reset()
        llm.eval(seq)
        logits = np.asarray(llm.scores[: len(seq) - 1])
        lse = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
        _ = float((lse - logits[np.arange(len(seq) - 1), seq[1:]]).sum())
        tokens += len(seq) - 1
    return tokens


def raw_transformers(window: int, threads: int):
    import torch
    import transformers

    from filters.lm.hf_backend import dequantised_folder

    torch.set_num_threads(threads)
    folder = dequantised_folder(resolve_model(SMOLLM2), transformers)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return lambda texts: _transformers_nll(torch, tok, model, texts, window)


def _transformers_nll(torch, tok, model, texts: list[str], window: int) -> int:
    tokens = 0
    for text in texts:
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"][:window]]])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            _ = -logp.gather(1, ids[0, 1:, None]).sum().item()
        tokens += ids.shape[1] - 1
    return tokens


def timed_raw(make, texts, window, threads) -> tuple[float, int]:
    score = make(window, threads)  # model load is not counted
    score(texts[:2])  # nor first-call costs
    started = time.perf_counter()
    tokens = score(texts)
    return tokens / (time.perf_counter() - started), tokens


def stage_run(texts: list[str], backend: str, window: int, shards: int, actors: int) -> dict:
    from workers.job import run_job
    from workers.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        for k, part in enumerate(np.array_split(np.arange(len(texts)), shards)):
            pq.write_table(pa.table({"id": [f"d{i}" for i in part], "text": [texts[i] for i in part]}),
                           f"{tmp}/in-{k}.parquet")
        spec = parse_spec({"name": "bench-ppl", "inputs": [f"{tmp}/in-*.parquet"], "output": f"{tmp}/out",
                           "stages": [{"stage": "perplexity_v1", "params": {
                               "backend": backend, "window": window, "num_actors": actors,
                               "cpus_per_actor": 2 // actors}}]})
        started = time.perf_counter()
        run_job(spec, progress=False)
        wall = time.perf_counter() - started
        out = Path(tmp) / "out"
        tokens = sum(pq.read_table(p, columns=["tokens"])["tokens"].to_numpy().sum()
                     for p in out.glob("stages/01-perplexity_v1/scores/*.parquet"))
        score_s = sum(json.loads(p.read_text())["seconds"] for p in out.glob("_done/*perplexity_v1.score.json"))
    return {"tokens": int(tokens), "in_actor": tokens / (score_s / actors), "end_to_end": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=96)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--backends", default="transformers,llama_cpp")
    args = ap.parse_args()
    texts, source = documents(args.docs)
    from workers.passes import connect_ray

    connect_ray()
    raw_fns = {"transformers": raw_transformers, "llama_cpp": raw_llama_cpp}
    rows = []
    for backend in args.backends.split(","):
        raw, tokens = timed_raw(raw_fns[backend], texts, args.window, 2)
        stage_runs = {a: stage_run(texts, backend, args.window, args.shards, a) for a in (1, 2)}
        for actors, r in stage_runs.items():
            assert r["tokens"] == tokens, (r["tokens"], tokens)  # the same tokens were scored
            rows.append((backend, raw, actors, r))
    print(f"\n{args.docs} docs ({source}), first {args.window} tokens each, {rows[0][3]['tokens']} tokens; "
          f"{os.cpu_count()} cores\n")
    print("| backend | raw library, 2 threads | stage actors × threads | stage in-actor | vs raw | stage end to end |")
    print("|---|---:|---|---:|---:|---:|")
    for backend, raw, actors, r in rows:
        print(f"| {backend} | {raw:,.0f} tok/s | {actors} × {2 // actors} | {r['in_actor']:,.0f} tok/s | "
              f"{r['in_actor'] / raw:.2f}× | {r['end_to_end']:,.0f} tok/s |")


if __name__ == "__main__":
    main()
