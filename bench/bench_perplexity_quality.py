"""How well ``perplexity_v1`` separates good text from junk, per bundled model.

* good: the 60 wikitext-2 validation articles; junk: the first ``--junk`` non-empty documents
  (file order, no sampling) of one raw Dolma Common Crawl shard (empty / whitespace-only
  documents are skipped and counted);
* ROC AUC = P(ppl_junk > ppl_good), ties ½ (Mann–Whitney U / n_good·n_junk), for perplexity
  and for bits per byte; 1.0 = perfect separation, 0.5 = none;
* Spearman ρ between our perplexity / bits per byte and CCNet's own KenLM perplexity
  (``metadata.perplexity``) over the 20 documents of two Dolma CCNet ``cc_en_head`` shards.

Every document is scored on its first ``--window`` tokens (``window_mode: head``). Wikitext is
pre-tokenised (`` @-@ ``, `` , ``, ``<unk>``), which inflates its perplexity under models trained
on ordinary text, so the good set is scored twice: as shipped, and after undoing the wikitext
tokenisation (``detokenise``; ``<unk>`` stays).

    PYTHONPATH=. python bench/bench_perplexity_quality.py [--models smollm2-135m,gemma3-270m]
        [--window 256] [--junk 240] [--threads 1] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.perplexity import PerplexityParams, load_scorer  # noqa: E402

GOOD = "quality/wikitext-2_valid_articles.jsonl"
JUNK = "web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
CCNET = ("web/dolma_ccnet_cc_en_head-0091.jsonl.gz", "web/dolma_ccnet_cc_en_head-0174.jsonl.gz")
BACKEND = {"smollm2-135m": "transformers", "gemma3-270m": "transformers"}  # both load as GGUF in transformers


def read_jsonl(path: Path) -> list[dict]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        return [json.loads(line) for line in f if line.strip()]


_DETOK = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "), (" ; ", "; "),
          (" : ", ": "), (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")"), (' " ', '"')]


def detokenise(text: str) -> str:
    for old, new in _DETOK:
        text = text.replace(old, new)
    return text


def auc(good: np.ndarray, junk: np.ndarray) -> float:
    """P(junk > good), ties ½: junk should score higher."""
    return mannwhitneyu(junk, good, alternative="two-sided").statistic / (len(good) * len(junk))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--junk", type=int, default=240, help="first N non-empty junk documents, in file order")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    paths = [args.data / p for p in (GOOD, JUNK, *CCNET)]
    if missing := [str(p) for p in paths if not p.exists()]:
        sys.exit(f"missing data file(s): {', '.join(missing)} (set --data to the shared data folder)")

    good = [d["text"] for d in read_jsonl(paths[0])]
    cc = [d["text"] for d in read_jsonl(paths[1])]
    nonempty = [t for t in cc if t.strip()]
    junk = nonempty[: args.junk]
    ref = [d for p in paths[2:] for d in read_jsonl(p)]
    ref_ppl = np.array([d["metadata"]["perplexity"] for d in ref])
    print(f"good {len(good)} docs; junk {len(junk)} docs (first non-empty of {len(cc)}, {len(cc) - len(nonempty)} "
          f"empty skipped in the file); CCNet reference {len(ref)} docs", file=sys.stderr)

    rows = []
    for model in args.models.split(","):
        backend = BACKEND.get(model, "transformers")
        t = time.perf_counter()
        scorer = load_scorer(PerplexityParams.model_validate(
            {"backend": backend, "model": model, "window": args.window, "n_threads": args.threads}))
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        g, d, j, r = (scorer.score(texts) for texts in (good, [detokenise(t) for t in good], junk,
                                                        [d["text"] for d in ref]))
        score_s = time.perf_counter() - t
        scored = [s for s in g + j + r if s is not None]
        sets = (("g", g), ("d", d), ("j", j), ("r", r))
        ppl = {k: np.array([s.perplexity for s in v]) for k, v in sets}
        bpb = {k: np.array([s.bits_per_byte for s in v]) for k, v in sets}
        rows.append(
            f"| {model} | {backend} | {len(g)} / {len(j)} / {len(r)} | {sum(s.tokens for s in scored):,} "
            f"| {sum(s.truncated for s in scored)} | {np.median(ppl['g']):.1f} / {np.median(ppl['d']):.1f} / "
            f"{np.median(ppl['j']):.1f} | {auc(ppl['g'], ppl['j']):.3f} / {auc(ppl['d'], ppl['j']):.3f} "
            f"| {auc(bpb['g'], bpb['j']):.3f} / {auc(bpb['d'], bpb['j']):.3f} "
            f"| {spearmanr(ppl['r'], ref_ppl).statistic:+.3f} | {spearmanr(bpb['r'], ref_ppl).statistic:+.3f} "
            f"| {load_s:.0f} | {score_s:.0f} |")
        print(rows[-1], file=sys.stderr)
    print(f"\nwindow {args.window} tokens (head), {args.threads} thread(s)\n")
    print("| model | backend | docs good / junk / CCNet | tokens scored | truncated docs "
          "| median ppl good / good detok. / junk | AUC ppl (good / detok.) | AUC bpb (good / detok.) "
          "| ρ ppl vs CCNet | ρ bpb vs CCNet | load s | score s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
