"""decontam_v1 on the web pool against an eval set cut from WikiText-2, with passages
planted into copies of web documents at known places.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_decontam.py [--data ../shared/data]

The eval set: WikiText-2 validation articles split into passages of whole sentences
(30–90 words). One passage is planted into each of ``--planted`` copies of web documents,
detokenised as a web page would show it ("state @-@ of" → "state-of", " , " → ", "), at a
word boundary chosen at random. The job runs through the public in-process runner
(index fit, matching, report fit, transform, lineage) three times: drop, cut with no
window (so the removed spans can be compared with the planted ones exactly) and flag.

Checks: every planted passage found and attributed to its item; no match in the
unplanted pool; the cut removes exactly the planted passage's words. Speed: the
stage's matching step against a plain Python baseline (a set of n-gram strings, the
textbook implementation), both on the same documents in this run, best of 3.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.base import Fitted  # noqa: E402
from filters.contamination import word_spans  # noqa: E402
from filters.decontam import DecontamV1  # noqa: E402
from workers.local import run_stages  # noqa: E402

SENTENCE = re.compile(r"(?<=[.!?]) (?=[A-Z])")


def detokenise(text: str) -> str:
    text = re.sub(r" @(.)@ ", r"\1", text)
    text = re.sub(r" ([.,;:!?')\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text).strip()


def passages(articles: list[dict], rng: random.Random) -> list[dict]:
    """Runs of whole sentences of 30-90 words from each paragraph (heading lines skipped)."""
    out = []
    for a in articles:
        for para in a["text"].split("\n"):
            para = para.strip()
            if not para or para.startswith("="):
                continue
            sentences, run = SENTENCE.split(para), []
            for s in sentences:
                run.append(s)
                if sum(len(x.split()) for x in run) >= rng.randint(30, 90):
                    out.append({"id": f"{a['id']}/{len(out)}", "text": " ".join(run)})
                    run = []
    return out


def plant(doc: str, passage: str, rng: random.Random) -> tuple[str, int, int]:
    cuts = [m.start() for m in re.finditer(r"\s", doc)] or [len(doc)]
    at = rng.choice(cuts)
    text = f"{doc[:at]} {passage} {doc[at:]}"
    return text, at + 1, at + 1 + len(passage)


def baseline_match(eval_texts: list[str], docs: list[str], n: int) -> list[bool]:
    """The plain way: every eval n-gram as a string in a Python set; each document's
    n-grams looked up one by one (same words: lowercased runs of letters and digits)."""
    word = re.compile(r"[^\W_]+")
    grams = set()
    for t in eval_texts:
        w = [x.lower() for x in word.findall(t)]
        grams.update(" ".join(w[i:i + n]) for i in range(len(w) - n + 1))
    hits = []
    for d in docs:
        w = [x.lower() for x in word.findall(d)]
        hits.append(any(" ".join(w[i:i + n]) in grams for i in range(len(w) - n + 1)))
    return hits


def best_of(fn, repeats=3):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--planted", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = Path(args.data)
    pool_file = data / "web" / "combined_web_pool.parquet"
    wiki_file = data / "quality" / "wikitext-2_valid_articles.jsonl"
    if not pool_file.exists() or not wiki_file.exists():
        print(f"skipped: needs {pool_file} and {wiki_file} (../shared/data)")
        return 0
    rng = random.Random(args.seed)
    pool = [r for r in pq.read_table(pool_file, columns=["id", "text"]).to_pylist() if (r["text"] or "").strip()]
    items = passages([json.loads(line) for line in wiki_file.read_text().splitlines()], rng)
    work = Path(tempfile.mkdtemp(prefix="bench-decontam-"))
    eval_file = work / "wikitext_passages.jsonl"
    eval_file.write_text("".join(json.dumps(it) + "\n" for it in items))
    planted = {}
    docs = [{"id": r["id"], "text": r["text"]} for r in pool]
    for k, src in enumerate(rng.sample(pool, args.planted)):
        item = rng.choice(items)
        text, start, end = plant(src["text"], detokenise(item["text"]), rng)
        words = word_spans(text[start:end])
        planted[f"planted-{k}"] = (item["id"], start + words[0][0], start + words[-1][1], text)
        docs.append({"id": f"planted-{k}", "text": text})
    table = pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    sets = [{"name": "wikitext2", "path": str(eval_file), "id_field": "id"}]
    print(f"pool: {len(pool)} web documents + {len(planted)} planted copies; eval set: {len(items)} WikiText-2 "
          f"passages from {wiki_file.name}")

    results = {}
    for action, extra in (("drop", {}), ("cut", {"cut_window": 0, "min_piece_chars": 0}), ("flag", {})):
        start = time.perf_counter()
        run = run_stages([("decontam_v1", {"eval_sets": sets, "action": action, **extra})], table, unit_rows=500,
                         workdir=work / action)
        results[action] = (run, time.perf_counter() - start)

    drop_rows = {r["doc_id"]: r for r in results["drop"][0].decisions("decontam_v1")}
    found = {d for d, r in drop_rows.items() if r["reason"] == "decontam.eval_overlap"}
    right_item = sum(json.loads(drop_rows[d]["detail"])["eval_item"] == planted[d][0] for d in planted if d in found)
    false = sorted(found - set(planted))
    cut_rows = {r["doc_id"]: r for r in results["cut"][0].decisions("decontam_v1")}
    exact_spans = sum(json.loads(cut_rows[d]["detail"] or "{}").get("removed_spans") == [[s, e]]
                      for d, (_, s, e, _) in planted.items())
    out = dict(zip(results["cut"][0].output["id"].to_pylist(), results["cut"][0].output["text"].to_pylist(),
                   strict=True))
    exact_text = sum(out.get(d) == "\n\n".join(p for p in (t[:s].strip(), t[e:].strip()) if p)
                     for d, (_, s, e, t) in planted.items())
    flag_rows = results["flag"][0].decisions("decontam_v1")
    flagged = {r["doc_id"] for r in flag_rows if r["scores"].get("contaminated") == 1}

    stage = DecontamV1({"eval_sets": sets})
    artifacts = work / "index"
    artifacts.mkdir()
    stage.index(None, artifacts)
    fitted = Fitted(None, artifacts)
    texts = table["text"].to_pylist()
    ours_s, scores = best_of(lambda: stage.match(table.select(["id", "text"]), fitted))
    bloom_stage = DecontamV1({"eval_sets": sets, "index": "bloom"})
    (work / "bloom-index").mkdir()
    index_s, _ = best_of(lambda: bloom_stage.index(None, work / "bloom-index"), repeats=1)
    bloom_s, bloom_scores = best_of(lambda: bloom_stage.match(table.select(["id", "text"]),
                                                              Fitted(None, work / "bloom-index")))
    base_s, base_hits = best_of(lambda: baseline_match([it["text"] for it in items], texts, 13))
    ours_hits = [c > 0 for c in scores["candidates"].to_pylist()]
    mb = sum(len(t.encode()) for t in texts) / 1e6

    print()
    print("| check | result |")
    print("|---|---:|")
    print(f"| planted passages found (drop) | {len(found & set(planted))} / {len(planted)} |")
    print(f"| … attributed to the planted item | {right_item} / {len(planted)} |")
    print(f"| matches in the unplanted pool ({len(pool)} docs) | {len(false)} |")
    print(f"| cut: removed span == planted passage's words | {exact_spans} / {len(planted)} |")
    print(f"| cut: text == original without the passage | {exact_text} / {len(planted)} |")
    print(f"| flag: flagged == planted, nothing removed | {flagged == set(planted)}, "
          f"{results['flag'][0].output.num_rows == len(docs)} |")
    print()
    print(f"| matching step ({len(docs)} docs, {mb:.1f} MB) | seconds | docs/s | MB/s | docs with a hit |")
    print("|---|---:|---:|---:|---:|")
    print(f"| decontam_v1.match (index loaded) | {ours_s:.3f} | {len(docs) / ours_s:,.0f} | {mb / ours_s:.1f} | "
          f"{sum(ours_hits)} |")
    print(f"| decontam_v1.match, Bloom index (1e-6) | {bloom_s:.3f} | {len(docs) / bloom_s:,.0f} | "
          f"{mb / bloom_s:.1f} | {sum(c > 0 for c in bloom_scores['candidates'].to_pylist())} (false hits are dropped "
          "by the report fit) |")
    print(f"| Python set of 13-gram strings (baseline, incl. building its set) | {base_s:.3f} | "
          f"{len(docs) / base_s:,.0f} | {mb / base_s:.1f} | {sum(base_hits)} |")
    print(f"\nindex fit (Bloom, {len(items)} items read, hashed and inserted): {index_s:.3f} s")
    print()
    print("| whole job through the in-process runner | seconds |")
    print("|---|---:|")
    for action, (_, seconds) in results.items():
        print(f"| {action} | {seconds:.2f} |")
    if false:
        print("\nunplanted matches:", false[:10])
    ok = len(found & set(planted)) == len(planted) and not false and exact_spans == len(planted)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
