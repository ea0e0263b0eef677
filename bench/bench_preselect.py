"""``preselect_v1``: classifier throughput, calibration cost, and how well its score
separates good text from junk next to perplexity and stop words.

1. Throughput: the stage's ``score`` (with ``scorer:``) vs ``fasttext``'s own batched
   ``predict(k=-1)`` on the same short web documents, one thread, same run.
2. Calibration cost: tokens/s of each family model, the stage's ``family_bpc`` vs the raw
   backend (``SmallLMScorer.score``) on the same texts.
3. Quality (ROC AUC, good above junk): good = the odd-numbered WikiText-2 validation
   articles (the even ones are the bundled family's target set, so they are not used);
   junk = the first ``--junk`` non-empty documents of the raw Dolma CC-2019 shard. The
   classifier is calibrated on the combined web pool *without* any document of that
   shard (C4, CCNet heads, data-prep-kit and RedPajama pages): trained on one pool,
   scored on another. Next to it: S itself (the family on the evaluated documents, no
   classifier), ``perplexity_v1`` bits per byte (SmolLM2-135M, first 256 tokens, lower
   is better) and the stop-word count of ``quality_rules_v1``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_preselect.py \
        [--data ../shared/data] [--junk 240] [--sample 2000] [--models DIR] [--throughput-only]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import mannwhitneyu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.lm.family import calibration_text, member_scorer  # noqa: E402
from filters.preselect import MODEL_FILE, PreselectV1, predict_positive  # noqa: E402
from filters.preselect_method import fasttext_text, predictive_strength  # noqa: E402
from workers.fit_view import TableScoreView  # noqa: E402

JUNK_FILE = "web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
JUNK_SOURCE = "CC-MAIN-2019-30 raw extracted (allenai/dolma fixture)"


def auc(good: np.ndarray, junk: np.ndarray) -> float:
    return float(mannwhitneyu(good, junk).statistic / (len(good) * len(junk)))


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def calibrate(stage: PreselectV1, texts: list[str]) -> TableScoreView:
    bpc = stage.family_bpc(texts)
    ok = np.isfinite(bpc).all(axis=1)
    strength = predictive_strength(bpc[ok], [m.benchmark_score for m in stage.members()])
    kept = [t for t, g in zip(texts, ok, strict=True) if g]
    return TableScoreView(pa.table({"id": [f"c{i}" for i in range(len(kept))], "order": list(range(len(kept))),
                                    "strength": strength, "calibration_text": kept}))


def train(view: TableScoreView, params: dict) -> tuple[Path, dict]:
    work = Path(tempfile.mkdtemp(prefix="bench-preselect-"))
    PreselectV1(params).train(view, work)
    return work / MODEL_FILE, json.loads((work / "calibration.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--junk", type=int, default=240)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--models", type=Path, help="keep the two trained classifiers here; reuse them when present")
    ap.add_argument("--throughput-only", action="store_true", help="stop after the scoring throughput table")
    args = ap.parse_args()
    pool = pq.read_table(args.data / "web" / "combined_web_pool.parquet").to_pylist()
    calib = [r["text"] for r in pool if r["source"] != JUNK_SOURCE and (r["text"] or "").strip()][: args.sample]
    with open(args.data / "quality" / "wikitext-2_valid_articles.jsonl") as f:
        wiki = [json.loads(line)["text"] for line in f]
    good = wiki[1::2]
    with gzip.open(args.data / JUNK_FILE, "rt") as f:
        junk = [t for t in (json.loads(line).get("text") or "" for line in f) if t.strip()][: args.junk]

    stage = PreselectV1({"n_threads": 1})
    # The same calibration trains fastText at its defaults (the method) and at dim 10 (fast).
    arms = {"dim 100 (default)": {}, "dim 10": {"dim": 10}}
    kept = {arm: args.models / f"{arm.split()[1]}.bin" for arm in arms} if args.models else {}
    if kept and all(p.exists() for p in kept.values()):
        models = kept
        print(f"classifiers reused from {args.models} (trained by an earlier run of this benchmark)")
    else:
        view, secs = timed(calibrate, stage, calib)
        models = {}
        for arm, extra in arms.items():
            models[arm], report = train(view, {"n_threads": 1, **extra})
            if kept:
                kept[arm].parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(models[arm], kept[arm])
        print(f"calibration: {len(calib)} documents of the web pool without {JUNK_FILE} → {report['positives']} "
              f"positives, {report['negatives']} negatives ({secs:.0f} s); S histogram "
              f"{report['strength_histogram']}")

    # 1. throughput on short web documents
    import fasttext

    print("\nfastText scoring, 20,000 web documents (the pool's, repeated), 1 thread, best of 5")
    print("raw = fasttext's predict(list, k=-1) on lines cleaned beforehand; released = the same call with the")
    print("released filter.py's per-document replace('\\n', ' ') inside the timing (a real caller must clean)")
    print(f"{'model':<19}{'documents':<24}{'path':<36}{'docs/s':>10}{'vs raw':>8}{'vs released':>12}")
    for arm, model_path in models.items():
        raw_model = fasttext.load_model(str(model_path))
        scorer_stage = PreselectV1({"scorer": str(model_path)})
        for limit in (300, 1000):
            short = [r["text"] for r in pool if 0 < len((r["text"] or "").strip()) <= limit]
            texts = (short * (20000 // len(short) + 1))[:20000]
            lines = [fasttext_text(t) for t in texts]
            docs = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
            scorer_stage.score(docs.slice(0, 10))  # load the model outside the timing

            def released(model=raw_model, texts=texts):
                return model.predict([t.replace("\n", " ") for t in texts], k=-1)

            rows = []
            for _ in range(5):
                _, raw_s = timed(raw_model.predict, lines, -1)
                _, rel_s = timed(released)
                _, stage_s = timed(scorer_stage.score, docs)
                _, fn_s = timed(predict_positive, raw_model, texts)
                rows.append((raw_s, rel_s, stage_s, fn_s))
            raw_s, rel_s, stage_s, fn_s = (min(c) for c in zip(*rows, strict=True))
            what = f"≤ {limit} chars (mean {np.mean([len(t) for t in texts]):.0f})"
            for name, s in (("raw fasttext predict(list, k=-1)", raw_s), ("released filter.py call", rel_s),
                            ("predict_positive (P(__label__1))", fn_s), ("stage.score (Arrow in/out)", stage_s)):
                print(f"{arm:<19}{what:<24}{name:<36}{len(texts) / s:>10,.0f}{raw_s / s:>8.2f}{rel_s / s:>12.2f}")

    if args.throughput_only:
        return

    # 2. calibration cost per family model
    sample = [calibration_text(t, 2000) for t in calib[:150]]
    print(f"\ncalibration cost, {len(sample)} documents × ≤ 2000 chars, 1 thread")
    print(f"{'model':<12}{'tokens':>9}{'raw tok/s':>11}{'stage tok/s':>13}{'ratio':>7}")
    for member in stage.members():
        raw = member_scorer(member, 255, 1)
        n_tok = sum(len(raw.tokenize(t)) for t in sample)
        _, raw_s = timed(raw.score, sample)
        one = PreselectV1({"n_threads": 1, "models": None})
        one._members, one._scorers = [member], [raw]
        _, stage_s = timed(one.family_bpc, sample)
        print(f"{member.name:<12}{n_tok:>9,}{n_tok / raw_s:>11,.0f}{n_tok / stage_s:>13,.0f}{raw_s / stage_s:>7.2f}")

    # 3. quality
    evaluated = good + junk
    ps = {arm: np.array(predict_positive(fasttext.load_model(str(path)), evaluated), dtype=float)
          for arm, path in models.items()}
    bpc = stage.family_bpc(evaluated)
    s = predictive_strength(bpc, [m.benchmark_score for m in stage.members()])
    from filters.perplexity import PerplexityParams, load_scorer

    ppl = load_scorer(PerplexityParams(window=256, n_threads=2))
    bpb = np.array([r.bits_per_byte for r in ppl.score(evaluated)])
    stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
    stops = np.array([sum(w in stop for w in t.lower().split()) for t in evaluated], dtype=float)
    n = len(good)
    print(f"\nROC AUC, good = {n} odd WikiText-2 valid articles, junk = {len(junk)} raw CC-2019 documents")
    print(f"{'signal':<52}{'AUC':>6}")
    signals = [(f"preselect_v1 P(1), {arm} (other pool)", v) for arm, v in ps.items()]
    for name, values in (*signals, ("predictive strength S (family)", s),
                         ("perplexity_v1 bits/byte (SmolLM2, lower)", -bpb), ("stop-word count", stops)):
        print(f"{name:<52}{auc(values[:n], values[n:]):>6.3f}")


if __name__ == "__main__":
    main()
