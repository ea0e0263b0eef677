"""``concept_prune_v1``: embedding throughput per embedder, the cost of k-means + SemDeDup +
quotas at scale, and cluster quality on labelled text.

1. Embedding (2 threads, one process): the stage's ``embed`` (Arrow in, fixed-size-list
   column out) vs the library's own call on the same texts in the same run —
   sentence-transformers ``encode(normalize_embeddings=True)`` for MiniLM, model2vec's
   ``StaticModel.encode`` for the distilled model (distillation timed too).
2. Scale: the stage's ``cluster`` fit called outside a job, i.e. its one-bucket form in
   one process (faiss spherical k-means with the default k ≈ √n on a ≤ 100k sample, the
   key rows assigned a batch at a time to a scratch file, sorted by cluster in DuckDB,
   blockwise SemDeDup a cluster at a time) and ``select`` (quotas, ranks) on n random unit vectors
   (d = 384, MiniLM's size), each size in a fresh process: wall time and peak RSS.
3. Quality: adjusted mutual information between the Debian Python docs' ``section``
   label and the cluster of each document, per embedder (k = default √n).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_concept.py \
        [--data ../shared/data] [--sizes 10000,100000,1000000] [--docs 400] [--scale-only]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.base import Fitted  # noqa: E402
from filters.concept_prune import ConceptPruneV1  # noqa: E402
from filters.embedders import distill_model2vec, minilm_path  # noqa: E402
from workers.fit_view import TableScoreView  # noqa: E402


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def embedding_throughput(texts: list[str], m2v_texts: list[str], work: Path) -> dict[str, Path]:
    import torch
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    distilled, distill_s = timed(distill_model2vec, minilm_path(), work / "m2v", 256)
    print(f"model2vec distillation of the bundled MiniLM: {distill_s:.1f} s")
    print(f"\nembedding throughput, 2 threads, web-pool documents (mean {np.mean([len(t) for t in texts]):.0f} chars)")
    print(f"{'embedder':<12}{'docs':>6}{'raw docs/s':>12}{'stage docs/s':>14}{'stage/raw':>11}")
    raw_st = SentenceTransformer(str(minilm_path()), device="cpu")
    raw_m2v = StaticModel.from_pretrained(str(distilled))
    arms = (("minilm", texts, lambda t: raw_st.encode(t, batch_size=32, normalize_embeddings=True), {}),
            ("model2vec", m2v_texts, lambda t: raw_m2v.encode(t, batch_size=1024, max_length=512,
                                                               use_multiprocessing=False), {"path": str(distilled)}))
    for name, docs, raw, extra in arms:
        stage = ConceptPruneV1({"embedder": {"kind": name, **extra}, "n_threads": 2})
        table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs})
        stage.embed(table.slice(0, 4), Fitted(None, None))  # load outside the timing
        raw(docs[:4])
        raw_s = min(timed(raw, docs)[1] for _ in range(2))
        stage_s = min(timed(stage.embed, table, Fitted(None, None))[1] for _ in range(2))
        n = len(docs)
        print(f"{name:<12}{n:>6}{n / raw_s:>12,.1f}{n / stage_s:>14,.1f}{raw_s / stage_s:>11.2f}")
    return {"model2vec": distilled}


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the forking parent's peak.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def scale_one(n: int) -> None:
    """Runs in a fresh process: the fit and the selection on n random unit vectors."""
    dim = 384
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    del vecs
    table = pa.table({"id": pa.array([f"d{i}" for i in range(n)]), "order": pa.array(np.arange(n)),
                      "embedding": column})
    made = time.perf_counter() - started
    before = peak_rss_mb()  # the vectors (numpy, then Arrow)
    stage = ConceptPruneV1({"n_threads": 2})
    with tempfile.TemporaryDirectory() as tmp:
        view = TableScoreView(table, memory_limit="4GB")
        fitted, fit_s = timed(stage.cluster, view, Path(tmp))
        view.close()
        del table, column, view
        fitted_obj = Fitted(fitted, Path(tmp))
        scores = fitted.select(["id", "order"])
        sel, sel_s = timed(stage.select, scores, fitted_obj)
        report = json.loads((Path(tmp) / "clusters.json").read_text())
    peak = peak_rss_mb()
    print(json.dumps({"n": n, "k": report["clusters"], "fit_s": fit_s, "select_s": sel_s, "peak_mb": peak,
                      "kept": int(sum(sel.keep)), "duplicates": report["semantic_duplicates"], "made_s": made,
                      "input_mb": before}))


def scale(sizes: list[int]) -> None:
    print("\nk-means + SemDeDup + quotas on random unit vectors (d = 384), 2 threads, a fresh process each")
    print("(input MB: the process after making the vectors, numpy then Arrow; peak includes it)")
    print(f"{'n':>10}{'k':>7}{'fit s':>9}{'select s':>10}{'input MB':>10}{'peak RSS MB':>13}{'kept':>10}")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--scale-one", str(n)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n']:>10,}{r['k']:>7,}{r['fit_s']:>9.1f}{r['select_s']:>10.1f}{r['input_mb']:>10,.0f}"
              f"{r['peak_mb']:>13,.0f}"
              f"{r['kept']:>10,}")


def quality(data: Path, distilled: Path) -> None:
    from sklearn.metrics import adjusted_mutual_info_score

    with gzip.open(data / "debian" / "python3.11-doc_rst_sources.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    texts, labels = [r["text"] for r in rows], [r["section"] for r in rows]
    table = pa.table({"id": [r["id"] for r in rows], "order": list(range(len(rows))), "text": texts})
    print(f"\ncluster quality: AMI(section, cluster) on {len(rows)} Debian python3.11-doc pages "
          f"({len(set(labels))} sections), k = default")
    print(f"{'embedder':<12}{'k':>5}{'AMI':>8}{'embed s':>9}")
    for name, extra in (("minilm", {}), ("model2vec", {"path": str(distilled)})):
        stage = ConceptPruneV1({"embedder": {"kind": name, **extra}, "n_threads": 2})
        emb, embed_s = timed(stage.embed, table, Fitted(None, None))
        with tempfile.TemporaryDirectory() as tmp:
            fitted = stage.cluster(TableScoreView(table.select(["id", "order"]).append_column("embedding",
                                                                                               emb["embedding"])),
                                   Path(tmp))
        clusters = fitted["cluster"].to_pylist()
        print(f"{name:<12}{len(set(clusters)):>5}{adjusted_mutual_info_score(labels, clusters):>8.3f}{embed_s:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--docs", type=int, default=400, help="web documents MiniLM embeds (model2vec: 10x)")
    ap.add_argument("--scale-only", action="store_true", help="only the k-means/SemDeDup/quota scale runs")
    ap.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_one:
        scale_one(args.scale_one)
        return
    if args.scale_only:
        scale([int(s) for s in args.sizes.split(",")])
        return
    pool = [t for t in pq.read_table(args.data / "web" / "combined_web_pool.parquet")["text"].to_pylist()
            if t and t.strip()]
    texts = pool[: args.docs]
    m2v_texts = (pool * (10 * args.docs // len(pool) + 1))[: 10 * args.docs]
    with tempfile.TemporaryDirectory() as work:
        models = embedding_throughput(texts, m2v_texts, Path(work))
        quality(args.data, models["model2vec"])
    scale([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
