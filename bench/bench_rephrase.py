"""rephrase_v1 throughput against its baselines, measured in one run on the same chunks:

1. generated tokens/s of the stage (llama_cpp backend, in process, no cache hits) vs
   direct llama-cpp-python ``create_chat_completion`` calls on the same messages;
2. the stage's openai backend against a local ``python -m llama_cpp.server`` at
   concurrency 1, 2 and 4, vs the same requests sent one by one with httpx;
3. with ``--pairs``: three real input/output pairs per style (for the closing note).

Chunks come from clean C4 pages in ../shared/data when present, else built-in text.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_rephrase.py [--docs 8] [--pairs]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
C4 = ROOT.parent / "shared" / "data" / "web" / "olmo_c4-sample.00000-of-00001.json.gz"
FALLBACK = ["The railway opened in 1850 and carried coal from the valley to the port. Passenger trains followed ten "
            "years later. The line closed in 1965, and its route is now a cycle path used by thousands of people "
            "every summer. The old station houses a small museum about the line and the mines it served."] * 16


def corpus(n: int) -> tuple[list[str], str]:
    if not C4.exists():
        return FALLBACK[:n], "built-in text (../shared/data absent)"
    texts = []
    with gzip.open(C4, "rt") as f:
        for line in f:
            text = json.loads(line)["text"]
            if 400 <= len(text) <= 1500:  # one or two 300-token chunks each
                texts.append(text)
            if len(texts) == n:
                break
    return texts, f"{C4.name} (first {n} pages of 400-1500 chars)"


def stage_run(texts: list[str], params: dict) -> dict:
    from workers.local import run_stages

    with tempfile.TemporaryDirectory() as tmp:
        docs = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts})
        started = time.perf_counter()
        run = run_stages([("rephrase_v1", params)], docs, workdir=tmp)
        wall = time.perf_counter() - started
        rows = run.decisions("rephrase_v1")
    return {"stats": run.funnel[-1]["stage_stats"], "wall": wall, "rows": rows, "output": run.output}


def requests_of(texts: list[str], params: dict) -> list[list[dict]]:
    """The exact chat messages the stage sends for these texts (same chunking and styles)."""
    from filters.lm.llama_cpp_chat import LlamaCppChat
    from filters.lm.models import SMOLLM2
    from filters.rephrase import RephraseParams
    from filters.rephrase_plan import styles_per_chunk
    from filters.wrap_chunks import pack_chunks, wrap_messages

    p = RephraseParams.model_validate(params)
    count = LlamaCppChat(SMOLLM2, vocab_only=True).count_tokens
    out = []
    for i, text in enumerate(texts):
        chunks = pack_chunks(text, count, p.chunk_tokens)
        for j, styles in enumerate(styles_per_chunk(f"d{i}", len(chunks), p.ratio, p.styles)):
            out += [wrap_messages(p.prompt(s), chunks[j].text) for s in styles]
    return out


def direct_llama(messages: list[list[dict]], params: dict) -> tuple[int, float]:
    from filters.lm.llama_cpp_chat import LlamaCppChat

    chat = LlamaCppChat(n_threads=1)
    tokens, started = 0, time.perf_counter()
    for m in messages:
        tokens += chat.chat(m, max_tokens=params["max_new_tokens"], temperature=params["temperature"],
                            top_p=0.9, seed=0).completion_tokens
    return tokens, time.perf_counter() - started


def direct_http(url: str, messages: list[list[dict]], params: dict) -> tuple[int, float]:
    import httpx

    tokens, started = 0, time.perf_counter()
    with httpx.Client(timeout=300) as client:
        for m in messages:
            out = client.post(f"{url}/chat/completions", json={
                "messages": m, "max_tokens": params["max_new_tokens"], "temperature": params["temperature"],
                "top_p": 0.9, "seed": 0}).json()
            tokens += out["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--pairs", action="store_true", help="print 3 input/output pairs per style")
    args = ap.parse_args()
    texts, source = corpus(args.docs)
    params = {"max_new_tokens": args.max_new_tokens, "temperature": 0.7, "cpus_per_actor": 1}
    messages = requests_of(texts, params)
    print(f"corpus: {source}; {len(messages)} requests, max_new_tokens {args.max_new_tokens}, 1 thread\n")

    rows = []
    tokens, seconds = direct_llama(messages, params)
    rows.append(("direct llama-cpp-python", len(messages), tokens, seconds))
    run = stage_run(texts, params)
    s = run["stats"]
    assert s["generations"] == len(messages) and s["cache_hits"] == 0, s
    rows.append(("rephrase_v1 llama_cpp", int(s["generations"]), int(s["tokens_out_paid"]), s["generation_seconds"]))

    from test_rephrase import start_llama_server

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_llama_server(Path(tmp) / "server.log")
        try:
            tokens, seconds = direct_http(url, messages, params)
            rows.append(("direct HTTP, one at a time", len(messages), tokens, seconds))
            for c in (1, 2, 4):
                run = stage_run(texts, {**params, "backend": "openai", "base_url": url, "concurrency": c})
                s = run["stats"]
                rows.append((f"rephrase_v1 openai, concurrency {c}", int(s["generations"]),
                             int(s["tokens_out_paid"]), s["generation_seconds"]))
        finally:
            proc.terminate()
            proc.wait()

    base = {"direct llama-cpp-python": rows[0][2] / rows[0][3], "HTTP": rows[2][2] / rows[2][3]}
    print("| path | generations | tokens out | seconds | tokens/s | vs its baseline |")
    print("|---|---|---|---|---|---|")
    for name, n, tok, sec in rows:
        ref = base["direct llama-cpp-python"] if "llama" in name and "openai" not in name else base["HTTP"]
        print(f"| {name} | {n} | {tok} | {sec:.1f} | {tok / sec:.1f} | {tok / sec / ref:.2f}x |")

    if args.pairs:
        print("\n## three input/output pairs per style (SmolLM2-135M-Instruct, temperature 0.7)\n")
        for style in ("easy", "medium", "hard", "qa"):
            run = stage_run(texts[:6], {**params, "styles": [style], "max_new_tokens": 256})
            kept = [r for r in run["output"].to_pylist() if r["parent_id"]][:3]
            rejected = [r["reason"] for r in run["rows"] if r["change"] == "created" and r["reason"]]
            print(f"### {style}: {len(kept)} shown; rejected in this sample: {rejected}\n")
            sources = dict(zip(run["output"]["id"].to_pylist(), run["output"]["text"].to_pylist(), strict=True))
            for r in kept:
                d = json.loads(r["detail"])
                print(f"- source {d['source_id']} chunk {d['chunk_index']}: {sources[d['source_id']][:300]!r}")
                print(f"  output ({d['tokens_out']} tokens): {r['text'][:400]!r}\n")


if __name__ == "__main__":
    main()
