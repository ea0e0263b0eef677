"""The bucketed fit (``workers/bucketed_fit.py``): keys (MinHash band keys, exact-dedup
hashes) hashed into buckets by the scoring pass, one task per bucket, edges merged by the
fit; the result must be the single-node fit's, to the row."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WEB_POOL, needs_shared, write_shard

from filters.exact_dedup import ExactDedupV1
from filters.minhash import MinHashDedupV1
from workers.bucketed_fit import BYTES_PER_KEY_ROW, FitBudgetError, bucket_count, partition_keys
from workers.job import JobError, run_job
from workers.local import run_stages
from workers.spec import parse_spec

_rng = random.Random(8)
VOCAB = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(4000)]


def corpus(n: int = 600, seed: int = 3) -> pa.Table:
    """Random pages; near copies (2 words edited), exact copies, a 3-step chain, 90 copies of
    one page with a counter (a bucket past ALL_PAIRS_UP_TO), a page pasted into a longer
    one (containment), and a few too short to compare."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(80, 160))) for _ in range(n)]
    for _ in range(n // 10):
        words = rng.choice(texts[:n]).split()
        for j in rng.sample(range(len(words)), 2):
            words[j] = "edited"
        texts.append(" ".join(words))
    texts += texts[:15]
    chain = texts[20].split()
    for step in range(3):
        chain = chain[:]
        chain[10 + step * 7] = f"drift{step}"
        texts.append(" ".join(chain))
    page = " ".join(rng.choice(VOCAB) for _ in range(120))
    texts += [f"{page} copy {i}" for i in range(90)]
    texts.append(texts[40] + " " + " ".join(rng.choice(VOCAB) for _ in range(100)))
    texts += ["too short", "", "x y"]
    order = list(range(len(texts)))
    rng.shuffle(order)
    return pa.table({"id": [f"d{i:05d}" for i in range(len(texts))], "text": [texts[i] for i in order]})


def decisions(run) -> list[tuple]:
    return [(r["doc_id"], r["decision"], r["reason"], r["cluster_id"], r["survivor_id"],
             r["scores"].get("survivor_jaccard"), r["scores"].get("max_jaccard"))
            for r in run.decisions("minhash_dedup_v1")]


@pytest.mark.parametrize("params", [
    {},
    {"survivor": "longest", "containment": 0.8},
    {"verify": "signature", "threshold": 0.7},
])
def test_bucketed_fit_equals_the_single_node_fit(params, tmp_path):
    docs = corpus()
    one = run_stages([("minhash_dedup_v1", params)], docs, unit_rows=250)
    many = run_stages([("minhash_dedup_v1", params)], docs, unit_rows=250, fit_buckets=5, workdir=tmp_path)
    assert one.funnel[-1]["dropped"] >= 150  # near and exact copies, the chain, 89 of the 90 pages
    assert many.fits["minhash_dedup_v1"].equals(one.fits["minhash_dedup_v1"])
    assert decisions(many) == decisions(one)
    assert many.output.equals(one.output)
    marker = json.loads(next((tmp_path / "job" / "_done").glob("*minhash_dedup_v1.fit*")).read_text())
    facts = marker["buckets"]
    assert facts["buckets"] == 5 and facts["edges"] > 0 and facts["pairs"] >= facts["edges"]
    keys = pq.read_table(tmp_path / "job" / "stages" / "01-minhash_dedup_v1" / "buckets" / "keys")
    comparable = sum(1 for r in one.scores["minhash_dedup_v1"]["too_short_to_compare"].to_pylist() if not r)
    assert keys.num_rows == facts["keys"] == comparable * MinHashDedupV1().keys_per_doc()


def test_keys_are_split_by_bucket_one_row_group_each():
    scores = MinHashDedupV1().score(pa.table({"id": ["a", "b", "c"], "text": [" ".join(VOCAB[:50]), "no",
                                                                                " ".join(VOCAB[20:90])]}))
    scores = scores.append_column("order", pa.array([7, 8, 9], pa.int64()))
    parts = partition_keys(MinHashDedupV1(), scores, 4)
    assert len(parts) == 4 and sum(p.num_rows for p in parts) == 2 * 20  # "no" is too short: no keys
    for b, part in enumerate(parts):
        assert set(part["bucket"].to_pylist()) <= {b}
    rows = pa.concat_tables(parts).to_pylist()
    for ord_, row in ((7, 0), (9, 2)):  # bands count from 1, as generate_subscripts does
        mine = sorted((r["band"], r["key"]) for r in rows if r["ord"] == ord_)
        assert mine == list(enumerate(scores["band_keys"][row].as_py(), 1))
    # A (band, key) always lands in the same bucket, whichever unit it comes from.
    again = pa.concat_tables(partition_keys(MinHashDedupV1(), scores, 4)).to_pylist()
    assert again == rows


def exact_corpus(n: int = 900, seed: int = 5) -> pa.Table:
    """Distinct pages, groups of 2-40 equal pages (differing in case and spacing, which the
    normalisation removes), in shuffled order."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(5, 40))) for _ in range(n)]
    for g in range(60):
        page = texts[g * 7]
        texts += [page.upper() if i % 2 else "  " + page.replace(" ", "\n") for i in range(rng.randint(1, 39))]
    rng.shuffle(texts)
    return pa.table({"id": [f"d{i:05d}" for i in range(len(texts))], "text": texts})


def test_bucketed_exact_dedup_equals_the_single_node_fit(tmp_path):
    docs = exact_corpus()
    stages = [("exact_dedup_v1", {}), ("minhash_dedup_v1", {})]
    one = run_stages(stages, docs, unit_rows=200)
    many = run_stages(stages, docs, unit_rows=200, fit_buckets=6, workdir=tmp_path)
    fit = one.fits["exact_dedup_v1"]
    # The fit table holds the groups of two or more only, one row per group.
    groups = pa.table({"h": one.scores["exact_dedup_v1"]["text_hash"]}).group_by("h").aggregate([("h", "count")])
    assert sorted(fit["group_size"].to_pylist()) == sorted(n for n in groups["h_count"].to_pylist() if n > 1)
    assert fit.num_rows == 60
    assert many.fits["exact_dedup_v1"].equals(fit)
    assert many.fits["minhash_dedup_v1"].equals(one.fits["minhash_dedup_v1"])
    exact = [(r["doc_id"], r["decision"], r["reason"], r["cluster_id"], r["survivor_id"], r["scores"])
             for r in one.decisions("exact_dedup_v1")]
    assert exact == [(r["doc_id"], r["decision"], r["reason"], r["cluster_id"], r["survivor_id"], r["scores"])
                     for r in many.decisions("exact_dedup_v1")]
    assert sum(d == "drop" for _, d, *_ in exact) == docs.num_rows - 900  # all but one of each group
    assert many.output.equals(one.output)
    marker = json.loads(next((tmp_path / "job" / "_done").glob("*exact_dedup_v1.fit*")).read_text())
    root = tmp_path / "job" / "stages" / "01-exact_dedup_v1" / "buckets"
    assert marker["buckets"]["buckets"] == 6 and marker["buckets"]["keys"] == docs.num_rows
    assert marker["buckets"]["edges"] == marker["buckets"]["pairs"] == sum(d == "drop" for _, d, *_ in exact)
    assert not (root / "ends").exists()  # equal hashes need no check: no rows of documents are read
    assert "ends" not in marker["buckets"]["steps_wall_and_task_seconds"]


def test_a_stage_scored_without_key_files_gets_the_single_node_fit(tmp_path):
    """A job folder scored before a stage could be bucketed (no key files) resumes with the
    single-node fit: the same table."""
    from filters.registry import get_stage
    from workers.fits import run_fit
    from workers.job_folder import JobFolder
    from workers.planner import plan_passes
    from workers.shards import Shard, units_from_record

    docs = exact_corpus(300)
    run = run_stages([("exact_dedup_v1", {})], docs, unit_rows=100, fit_buckets=3, workdir=tmp_path)
    folder = JobFolder(tmp_path / "job")
    units = units_from_record([Shard(index=0, path=str(tmp_path / "input" / "docs.parquet"), rows=docs.num_rows,
                                     has_id=True)], folder.units())
    folder.bucket_keys(1, "exact_dedup_v1", units[0].key).unlink()
    stages = [get_stage("input_v1")(), ExactDedupV1()]
    step = next(p.fit_after for p in plan_passes(stages) if p.fit_after is not None)
    folder.marker(step.name).unlink()
    run_fit(folder, units, step, stages)
    assert "buckets" not in json.loads(folder.marker(step.name).read_text())
    assert pq.read_table(folder.fit(1, "exact_dedup_v1", step.method)).equals(run.fits["exact_dedup_v1"])


def test_exact_dedup_keys_of_one_hash_share_a_bucket():
    stage = ExactDedupV1()
    docs = exact_corpus(200)
    scores = stage.score(docs).append_column("order", pa.array(range(docs.num_rows), pa.int64()))
    rows = pa.concat_tables(partition_keys(stage, scores, 5)).to_pylist()
    assert len(rows) == docs.num_rows
    buckets: dict[str, set[int]] = {}
    for r in rows:
        buckets.setdefault(r["key"], set()).add(r["bucket"])
    assert all(len(b) == 1 for b in buckets.values()) and len({r["bucket"] for r in rows}) == 5


def test_bucket_count_follows_the_task_memory_budget():
    mh = MinHashDedupV1()
    assert bucket_count(1_000, [mh], 2048) == 1
    expected = int(np.ceil(10_000_000 * 20 * BYTES_PER_KEY_ROW / (2048 * 2**20 / 2)))
    assert bucket_count(10_000_000, [mh], 2048) == expected > 1
    assert bucket_count(10_000_000, [mh], 8192) < expected
    assert bucket_count(10**12, [mh], 64) == 4096  # capped


def test_a_bucket_over_the_memory_budget_fails_naming_the_setting():
    docs = corpus(1000)  # ~24,000 keys: 12,000 a bucket, ~770 kB at BYTES_PER_KEY_ROW
    with pytest.raises(FitBudgetError) as err:
        run_stages(["minhash_dedup_v1"], docs, fit_buckets=2, fit_task_memory_mb=1)
    assert "execution.fit_task_memory_mb = 1" in str(err.value) and "bucket" in str(err.value)


@pytest.mark.usefixtures("ray_cluster")
def test_a_job_runs_the_buckets_as_ray_tasks_with_the_same_result(tmp_path):
    docs = corpus(500, seed=9)
    half = docs.num_rows // 2
    for n, part in enumerate((docs.slice(0, half), docs.slice(half))):
        write_shard(tmp_path / "in" / f"s{n}.parquet", part["text"].to_pylist(), ids=part["id"].to_pylist())

    def job(out: str, execution: dict) -> tuple[dict, list[dict]]:
        spec = parse_spec({"name": "mh", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / out),
                           "stages": [{"stage": "minhash_dedup_v1"}], "execution": execution})
        manifest = run_job(spec, progress=False)
        rows = pa.concat_tables(pq.read_table(p) for p in sorted(
            (tmp_path / out / "stages" / "01-minhash_dedup_v1" / "decisions").glob("*.parquet"))).to_pylist()
        return manifest, rows

    single, d1 = job("single", {"unit_rows": 150})
    bucketed, d3 = job("bucketed", {"unit_rows": 150, "fit_buckets": 3, "fit_task_memory_mb": 256})
    assert json.loads((tmp_path / "bucketed" / "job.json").read_text())["fit_buckets"] == 3
    assert json.loads((tmp_path / "single" / "job.json").read_text())["fit_buckets"] == 1
    strip = [{k: v for k, v in r.items() if k not in ("job_id",)} for r in d1]
    assert [{k: v for k, v in r.items() if k not in ("job_id",)} for r in d3] == strip
    assert sum(r["decision"] == "drop" for r in d1) >= 100
    assert [f["sha256"] for f in bucketed["files"]] == [f["sha256"] for f in single["files"]]
    assert len(list((tmp_path / "bucketed" / "stages" / "01-minhash_dedup_v1" / "buckets" / "edges").glob("*"))) == 3

    with pytest.raises(JobError, match="execution.fit_task_memory_mb = 10000000 is more than any node"):
        job("huge", {"fit_buckets": 2, "fit_task_memory_mb": 10_000_000})


@pytest.mark.shared_data
@needs_shared(WEB_POOL)
def test_bucketed_fit_equals_the_single_node_fit_on_the_web_pool():
    docs = pq.read_table(WEB_POOL, columns=["id", "text"])
    stages = [("exact_dedup_v1", {}), ("minhash_dedup_v1", {})]
    one = run_stages(stages, docs, unit_rows=400)
    many = run_stages(stages, docs, unit_rows=400, fit_buckets=7)
    assert one.funnel[-1]["dropped"] > 0 and one.funnel[1]["dropped"] > 0
    assert many.fits["exact_dedup_v1"].equals(one.fits["exact_dedup_v1"])
    assert many.fits["minhash_dedup_v1"].equals(one.fits["minhash_dedup_v1"])
    assert decisions(many) == decisions(one)


def test_the_merge_reads_only_the_documents_of_pairs_that_are_not_edges(tmp_path):
    from filters.minhash import jaccard
    from filters.minhash_fit import _EdgeSims
    from workers.fit_view import TableScoreView

    docs = corpus(300)
    run = run_stages(["minhash_dedup_v1"], docs, unit_rows=120, fit_buckets=3, workdir=tmp_path)
    root = tmp_path / "job" / "stages" / "01-minhash_dedup_v1" / "buckets"
    edges = pq.read_table(list((root / "edges").glob("*.parquet"))).group_by(["a", "b", "sim"]).aggregate([])
    a, b, sim = (edges[c].to_numpy() for c in ("a", "b", "sim"))
    scores = run.scores["minhash_dedup_v1"]
    sets = {o: np.array(s, np.uint64) for o, s in zip(scores["order"].to_pylist(), scores["shingles"].to_pylist(),
                                                       strict=True)}
    with TableScoreView(scores) as view:
        sims = _EdgeSims(view, 120, sorted((root / "ends").glob("*.parquet")), a, b, sim)
        assert np.array_equal(sims.similarity(b[:50], a[:50], "exact"), sim[:50]) and sims.loaded == 0
        linked = set(zip(a.tolist(), b.tolist(), strict=True))
        # Two documents of some pairs (the merge only asks about members of a cluster) that are not an edge.
        u, v = next((u, v) for u in a.tolist() for v in b.tolist() if u < v and (u, v) not in linked)
        x, y = np.array([u]), np.array([v])
        assert sims.similarity(x, y, "exact")[0] == jaccard(sets[x[0]], sets[y[0]]) and sims.loaded == 2
