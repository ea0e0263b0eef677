"""minhash_dedup_v1: the pure parts on inline data, and the whole stage on Ray with a
hand-made duplicate structure (chain, cross-shard cluster, short docs)."""

from __future__ import annotations

import random
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xxhash
from conftest import run_cli, write_shard

from filters.minhash import (
    MinHashDedupV1,
    MinHashParams,
    _signatures,
    _sort_unique,
    band_keys,
    collision_probability,
    jaccard,
    normalise,
    normalised_buffers,
    permutations,
    shingle_hashes,
    shingle_sets,
    signatures,
)
from filters.minhash_fit import _components
from filters.word_ngrams import utf8_buffers, word_hashes, xxh64
from workers.job import run_job
from workers.minhash_clusters import cluster_members
from workers.spec import parse_spec

_letters = random.Random(7)
VOCAB = ["".join(_letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(2000)]


def edit(words: list[str], positions: list[int], tag: str) -> list[str]:
    """Substitute the words at ``positions`` with new, unique, digit-free words."""
    out = list(words)
    for p in positions:
        out[p] = tag + "".join(chr(ord("a") + int(c)) for c in str(p))
    return out


def sets_of(*texts: str) -> list[np.ndarray]:
    p = MinHashParams()
    return [shingle_hashes(normalise(t, p).split(), 5, {}) for t in texts]


def test_all_documents_at_once_hash_exactly_as_one_at_a_time():
    """``shingle_sets`` (Arrow split and dictionary, one pass over every document) gives
    each document the very hashes ``shingle_hashes`` gives it alone: empty, one-word and
    exactly-n-word documents, repeated n-grams, words shared across documents, and
    characters Python does not count as whitespace (zero-width space, a no-break space
    normalise removes)."""
    p = MinHashParams()
    rng = random.Random(11)
    texts = ["", "one", "a b c d", "a b c d e", "a b c d e a b c d e a b c d e", "x\u200by z w v u t",
             "Café naïve\u00a0déjà vu, déjà vu encore et encore", "   ", "7 8 9 10 11 12"]
    texts += [" ".join(rng.choice(VOCAB[:50]) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    rng.shuffle(texts)
    for n in (1, 3, 5):
        normalised = [normalise(t, p) for t in texts]
        flat, offsets = shingle_sets(normalised, n)
        assert len(offsets) == len(texts) + 1
        for i, words in enumerate(normalised):
            expected = shingle_hashes(words.split(), n, {})
            assert np.array_equal(flat[offsets[i]:offsets[i + 1]], expected), (n, texts[i])
    flat, offsets = shingle_sets([], 5)
    assert len(flat) == 0 and list(offsets) == [0]


def test_normalisation_follows_datatrove_steps():
    p = MinHashParams()
    assert normalise("Hello, WORLD! Price: 12.50 €  in 2024…", p) == "hello world price 0 in 0"
    assert normalise("Café naïve — déjà vu", p) == "cafe naive deja vu"
    assert normalise("A-b", MinHashParams(strip_punctuation=False)) == "a-b"


def test_normalisation_differences_from_datatrove_are_as_documented():
    """Pins the filters/minhash.py docstring: punctuation → space like datatrove's
    simplify_text (so hyphenated words split), but every Unicode P*/S* character, not
    datatrove's fixed list, and only "." / "," as decimal separators. The datatrove
    0.10.1 output of each input is in the comment."""
    p = MinHashParams()
    assert normalise("state-of-the-art", p) == "state of the art"  # same in datatrove (not "stateoftheart")
    assert normalise("12.50 €", p) == "0"  # datatrove: "0 €"
    assert normalise("¿Qué? ¡Sí!", p) == "que si"  # datatrove: "¿que ¡si"
    assert normalise("© 2024 Acme™ 30°C", p) == "0 acme 0 c"  # datatrove: "© 0 acme™ 0°c"
    assert normalise("a·b § c ‘d’", p) == "a b c d"  # datatrove: "a·b § c ‘d"
    assert normalise("emoji 😀 here", p) == "emoji here"  # datatrove: "emoji 😀 here"
    assert normalise("3٫5 and 3,5", p) == "0 0 and 0"  # datatrove: "0 and 0"
    assert normalise("Café naïve — déjà vu", p) == "cafe naive deja vu"  # same in datatrove


def test_components_of_a_small_edge_list():
    """Chains, two components, an isolated pair: groups in order of first appearance,
    members in order of first appearance; no edges, no groups."""
    a = np.array([1, 7, 2, 20, 3, 9], np.int64)
    b = np.array([2, 8, 3, 21, 4, 7], np.int64)
    # chain 1-2-3-4, chain 9-7-8 (edges given out of order), isolated pair 20-21
    assert _components(a, b) == [[1, 2, 3, 4], [7, 8, 9], [20, 21]]
    # two chains joined late by one edge become one component
    a2, b2 = np.array([10, 30, 11, 31, 11], np.int64), np.array([11, 31, 12, 32, 31], np.int64)
    assert _components(a2, b2) == [[10, 11, 30, 31, 12, 32]]
    assert _components(np.empty(0, np.int64), np.empty(0, np.int64)) == []
    groups = _components(np.array([5, 6], np.int64), np.array([6, 5], np.int64))
    assert groups == [[5, 6]]  # a repeated edge (both directions) is still one pair


def test_short_documents_are_flagged_not_dropped():
    stage = MinHashDedupV1()
    scores = stage.score(pa.table({"id": ["a", "b"], "text": ["only four words here", "one two three four five"]}))
    assert scores["too_short_to_compare"].to_pylist() == [True, False]
    assert scores["n_shingles"].to_pylist() == [0, 1]


def test_signatures_are_deterministic_and_estimate_jaccard():
    rng = random.Random(0)
    base = [rng.choice(VOCAB) for _ in range(400)]
    a, b = sets_of(" ".join(base), " ".join(edit(base, list(range(0, 400, 20)), "x")))
    exact = jaccard(a, b)
    sig = signatures([a, b], 256, seed=1)
    again = signatures([b, a], 256, seed=1)
    assert np.array_equal(sig[0], again[1]) and np.array_equal(sig[1], again[0])  # order-independent
    assert abs(np.mean(sig[0] == sig[1]) - exact) < 0.08
    assert not np.array_equal(signatures([a], 256, seed=2)[0], sig[0])


def reference_signatures(sets: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """The numpy formula: min over x of ((a·x + b) mod 2^64) >> 32, uint64 wrap-around."""
    a, b = permutations(k, seed)
    with np.errstate(over="ignore"):
        return np.array([((s[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0) for s in sets],
                        np.uint32).reshape(len(sets), k)


def test_compiled_signatures_equal_the_numpy_formula():
    """Random sets, including hashes near 0 and 2^64 (a·x + b wraps around), singletons and
    repeats; every permutation count the stage allows a row to have; empty rows are all ones."""
    rng = np.random.default_rng(3)
    top = np.iinfo(np.uint64).max
    sets = [rng.integers(0, top, size=int(rng.integers(1, 400)), dtype=np.uint64, endpoint=True) for _ in range(60)]
    sets += [np.array([0], np.uint64), np.array([top], np.uint64), np.array([top - 1, 1, top, 0, 1 << 63], np.uint64),
             np.repeat(np.uint64(12345), 7)]
    for k, seed in ((120, 1), (1, 7), (7, 2), (256, 99)):
        assert np.array_equal(signatures(sets, k, seed), reference_signatures(sets, k, seed)), (k, seed)
    a, b = permutations(120, 1)
    offsets = np.array([0, 0, 3, 3], np.int64)
    out = _signatures(np.array([5, 6, 7], np.uint64), offsets, a, b)
    assert (out[0] == 0xFFFFFFFF).all() and (out[2] == 0xFFFFFFFF).all()
    assert np.array_equal(out[1], reference_signatures([np.array([5, 6, 7], np.uint64)], 120, 1)[0])
    assert signatures([], 120, 1).shape == (0, 120)


def test_xxh64_port_and_band_keys_equal_the_xxhash_package():
    rng = random.Random(4)
    buf = np.frombuffer(bytes(rng.randrange(256) for _ in range(300)), np.uint8)
    for length in range(0, 100):
        for seed in (0, 1, 511, 2**64 - 1, rng.randrange(2**64)):
            start = rng.randrange(0, 300 - length + 1)
            expected = xxhash.xxh64_intdigest(bytes(buf[start:start + length]), seed=seed)
            assert int(xxh64(buf, start, start + length, np.uint64(seed))) == expected, (length, seed)
    sig = np.random.default_rng(5).integers(0, 2**32, size=(50, 120), dtype=np.uint32)
    for bands, rows in ((20, 6), (9, 13), (120, 1), (1, 120)):
        expected = np.array([[xxhash.xxh64_intdigest(row[j * rows:(j + 1) * rows].tobytes(), seed=j)
                              for j in range(bands)] for row in sig], np.uint64)
        assert np.array_equal(band_keys(sig, bands, rows), expected)


def test_words_split_on_exactly_python_and_arrow_whitespace():
    """The compiled splitter's whitespace is str.isspace's, which is Arrow's
    utf8_split_whitespace's: "a<c>b" is two words exactly for those code points."""
    cps = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    arr = pa.array(["a" + chr(c) + "b" for c in cps], pa.large_string())
    _, counts = word_hashes(*utf8_buffers(arr))
    arrow = pc.list_value_length(pc.utf8_split_whitespace(arr)).to_numpy()
    python = np.array([chr(c).isspace() for c in cps]) + 1
    assert np.array_equal(counts, python) and np.array_equal(arrow, python)
    assert int((python == 2).sum()) == 29


def test_sort_unique_sorts_any_input():
    """The bucket sort's speed depends on the hashes being spread; its result never does:
    values sharing their top bits (one bucket), all equal, few distinct, every size class."""
    rng = np.random.default_rng(6)
    cases = [rng.integers(0, 2**64, size=m, dtype=np.uint64) for m in (1, 2, 16, 17, 33, 300, 5000, 70000)]
    cases += [rng.integers(0, 1000, size=m, dtype=np.uint64) for m in (17, 300, 5000)]  # one bucket
    cases += [np.full(500, 7, np.uint64), rng.choice(np.array([3, 2**63, 2**64 - 1], np.uint64), size=2000)]
    cases += [np.sort(rng.integers(0, 2**64, size=400, dtype=np.uint64))[::-1].copy()]
    for values in cases:
        seg = values.copy()
        tmp = np.empty(len(seg), np.uint64)
        hist = np.empty(2 * len(seg) + 2, np.int64)
        u = _sort_unique(seg, tmp, hist)
        assert np.array_equal(seg[:u], np.unique(values)), len(values)


ASCII_CASES = ["", "   ", "x", "1.5 1..2 1,2,3 12. .5 a1b 3.14159x 007 1,5,", "A-b C_d E'f \x00g\x1ch\x7fi\tj",
               "Hello, WORLD! Price: 12.50 in 2024...", "tab\tand\nnewline\x0bvt\x0cff\rcr\x1d\x1e\x1f end",
               "x" * 40 + " " + "Y9,9.9" * 5]
OTHER_CASES = ["\u212a", "\u212a1.5", "Café naïve — déjà vu 3٫5", "١٢٣ and 4,5", "emoji 😀 here", "x\u200by z"]


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("numbers", [True, False])
@pytest.mark.parametrize("punctuation", [True, False])
@pytest.mark.parametrize("accents", [True, False])
def test_all_documents_normalised_at_once_have_normalises_words(lowercase, numbers, punctuation, accents):
    """``normalised_buffers`` (ASCII documents in one compiled pass) gives every document
    the words of ``normalise()``, for every switch; random ASCII texts included."""
    p = MinHashParams(lowercase=lowercase, numbers_to_zero=numbers, strip_punctuation=punctuation,
                      strip_accents=accents)
    rng = random.Random(12)
    alphabet = "".join(map(chr, range(128))) + "0123456789" * 3 + ".,.," + "aZ " * 5
    texts = ASCII_CASES + OTHER_CASES + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
                                         for _ in range(300)]
    data, offsets = normalised_buffers(texts, p)
    assert len(offsets) == len(texts) + 1
    for i, text in enumerate(texts):
        assert bytes(data[offsets[i]:offsets[i + 1]]).decode().split() == normalise(text, p).split(), text


def reference_score(texts: list[str | None], p: MinHashParams) -> pa.Table:
    """The score table as the per-document definitions make it: ``normalise``, ``shingle_hashes``,
    the numpy signature formula, xxhash band keys, one Python list per row."""
    texts = [t or "" for t in texts]
    sets = [shingle_hashes(normalise(t, p).split(), p.ngram, {}) for t in texts]
    k = p.bands * p.rows
    sig = reference_signatures([s for s in sets if len(s)], k, p.seed)
    rows = iter(range(len(sig)))
    sig_col, key_col = [], []
    for s in sets:
        if len(s) == 0:
            sig_col.append(None)
            key_col.append(None)
            continue
        row = sig[next(rows)]
        sig_col.append(row)
        key_col.append([xxhash.xxh64_intdigest(row[j * p.rows:(j + 1) * p.rows].tobytes(), seed=j)
                        for j in range(p.bands)])
    offsets = np.cumsum([0] + [len(s) for s in sets]).astype(np.int32)
    return pa.table({
        "too_short_to_compare": pa.array([len(s) == 0 for s in sets], pa.bool_()),
        "n_shingles": pa.array([len(s) for s in sets], pa.int64()),
        "chars": pa.array([len(t) for t in texts], pa.int64()),
        "shingles": pa.ListArray.from_arrays(pa.array(offsets),
                                             pa.array(np.concatenate(sets) if sets else [], pa.uint64())),
        "signature": pa.array(sig_col, pa.list_(pa.uint32())),
        "band_keys": pa.array(key_col, pa.list_(pa.uint64())),
    })


@pytest.mark.parametrize("params", [{}, {"ngram": 3, "bands": 9, "rows": 13, "seed": 7},
                                    {"strip_punctuation": False, "numbers_to_zero": False}])
def test_score_table_equals_the_per_document_definitions(params):
    p = MinHashParams(**params)
    rng = random.Random(13)
    texts: list[str | None] = ASCII_CASES + OTHER_CASES + [None, "one two three four five"]
    texts += [" ".join(rng.choice(VOCAB[:80]) for _ in range(rng.randint(0, 120))) for _ in range(200)]
    texts += ["Über " + " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 50))) for _ in range(20)]
    ids = [str(i) for i in range(len(texts))]
    scores = MinHashDedupV1(p).score(pa.table({"id": ids, "text": pa.array(texts, pa.string())}))
    assert scores.equals(reference_score(texts, p))
    empty = MinHashDedupV1(p).score(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    assert empty.num_rows == 0 and empty.schema.equals(scores.schema)


def test_default_banding_recalls_at_least_90_percent_at_08():
    p = MinHashParams()
    assert collision_probability(0.8, p.bands, p.rows) >= 0.99
    assert collision_probability(0.8, 9, 13) < 0.5  # datasketch's "optimal" split for 0.8 / 128


@pytest.fixture
def planted(tmp_path):
    """A chain A~X1~…~X6 (4 new words per step: J ≈ 0.87 per link, J(A, X6) < 0.5),
    an exact pair D/D2 in different shards, a short doc F and an unrelated doc G."""
    rng = random.Random(42)
    chain = [[rng.choice(VOCAB) for _ in range(300)]]
    positions = list(range(2, 300, 5))
    rng.shuffle(positions)
    for step in range(6):
        chain.append(edit(chain[-1], positions[4 * step: 4 * step + 4], f"x{'abcdef'[step]}"))
    d = [rng.choice(VOCAB) for _ in range(200)]
    g = [rng.choice(VOCAB) for _ in range(200)]
    names = ["A", "X1", "X2", "X3", "X4", "X5", "X6"]
    write_shard(tmp_path / "in" / "s0.parquet", [" ".join(w) for w in chain] + [" ".join(d), "too short to compare"],
                ids=names + ["D", "F"])
    write_shard(tmp_path / "in" / "s1.parquet", [" ".join(d), " ".join(g)], ids=["D2", "G"])
    sets = dict(zip(names, sets_of(*(" ".join(w) for w in chain)), strict=True))
    return tmp_path, sets


def run(tmp_path, out, workers=None, **params):
    spec = parse_spec({"name": "mh", "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / out),
                       "stages": [{"stage": "minhash_dedup_v1", "params": params}],
                       "execution": {"num_workers": workers}})
    manifest = run_job(spec, progress=False)
    d = pa.concat_tables(pq.read_table(p) for p in sorted(
        (tmp_path / out / "stages" / "01-minhash_dedup_v1" / "decisions").glob("*.parquet")))
    return manifest, {r["doc_id"]: {**r, "scores": dict(r["scores"])} for r in d.to_pylist()}


@pytest.mark.usefixtures("ray_cluster")
def test_known_structure_chain_cross_shard_and_short(planted):
    tmp_path, sets = planted
    chain = ["A", "X1", "X2", "X3", "X4", "X5", "X6"]
    links = [jaccard(sets[u], sets[v]) for u, v in zip(chain, chain[1:], strict=False)]
    to_a = {x: jaccard(sets["A"], sets[x]) for x in chain[1:]}
    assert min(links) >= 0.8 and to_a["X5"] >= 0.5 > to_a["X6"]  # a real, drifting chain
    manifest, d = run(tmp_path, "out")
    assert set(d) == {*chain, "D", "F", "D2", "G"}  # a lineage row for every document
    for x in chain[1:6]:  # chained to A and still sharing >= half their 5-grams with it
        assert d[x]["decision"] == "drop" and d[x]["reason"] == "minhash.duplicate" and d[x]["survivor_id"] == "A"
        assert d[x]["scores"]["survivor_jaccard"] == pytest.approx(to_a[x])
        assert d[x]["scores"]["max_jaccard"] >= 0.8 and d[x]["scores"]["cluster_size"] == 6
    # X6 is linked to X5 at J >= 0.8 but shares < half its 5-grams with A: never removed for A.
    assert d["X6"]["decision"] == "keep" and d["X6"]["survivor_id"] is None
    assert d["D2"]["decision"] == "drop" and d["D2"]["survivor_id"] == "D"  # cluster across shards
    assert d["D2"]["scores"]["cluster_size"] == 2 and d["D2"]["scores"]["max_jaccard"] == 1.0
    assert d["F"]["decision"] == "keep" and d["F"]["scores"]["too_short_to_compare"] == 1.0
    assert d["G"]["decision"] == "keep" and d["G"]["cluster_id"] is None
    assert manifest["output"]["rows"] == 5  # A, X6, D, F, G
    members = cluster_members(tmp_path / "out", "A")
    assert members["members"] == chain[:6] and len(members["pairs"]) == 15
    assert members["pairs"][0]["jaccard"] == pytest.approx(links[0])


def chain_ids(decisions: dict) -> set[str]:
    return {k for k in decisions if k.startswith(("A", "X"))}


@pytest.mark.usefixtures("ray_cluster")
def test_survivors_are_the_same_for_any_worker_count_and_rule(planted):
    tmp_path, _ = planted
    m1, d1 = run(tmp_path, "w1", workers=1)
    m2, d2 = run(tmp_path, "w2", workers=2)
    assert {k: (v["decision"], v["survivor_id"]) for k, v in d1.items()} == {
        k: (v["decision"], v["survivor_id"]) for k, v in d2.items()}
    assert [f["sha256"] for f in m1["files"]] == [f["sha256"] for f in m2["files"]]
    _, longest = run(tmp_path, "longest", survivor="longest")
    assert longest["D"]["survivor_id"] == longest["D2"]["survivor_id"]  # equal length: ties go to the smaller id
    assert longest["X1"]["survivor_id"] in chain_ids(longest)


@pytest.mark.usefixtures("ray_cluster")
def test_a_bucket_larger_than_the_all_pairs_limit_forms_the_same_cluster(tmp_path):
    """300 copies of one page with a different counter each (a crawled boilerplate page)
    share a bucket in every band: above ALL_PAIRS_UP_TO the bucket is linked as a chain and
    a star (linear), and the cluster is the one all pairs would give."""
    from filters.minhash_fit import ALL_PAIRS_UP_TO

    rng = random.Random(5)
    page = [rng.choice(VOCAB) for _ in range(400)]
    copies = [" ".join(page + [f"counter{i}"]) for i in range(300)]
    other = " ".join(rng.choice(VOCAB) for _ in range(400))
    write_shard(tmp_path / "in" / "s0.parquet", copies[:150] + [other], ids=[f"p{i:03d}" for i in range(150)] + ["o"])
    write_shard(tmp_path / "in" / "s1.parquet", copies[150:], ids=[f"p{i:03d}" for i in range(150, 300)])
    assert len(copies) > ALL_PAIRS_UP_TO
    manifest, d = run(tmp_path, "out")
    dropped = sorted(k for k, r in d.items() if r["decision"] == "drop")
    assert dropped == [f"p{i:03d}" for i in range(1, 300)]  # one survivor: the smallest id
    assert {d[k]["survivor_id"] for k in dropped} == {"p000"} and d["o"]["decision"] == "keep"
    assert all(d[k]["scores"]["cluster_size"] == 300 and d[k]["scores"]["survivor_jaccard"] > 0.9 for k in dropped)
    assert manifest["output"]["rows"] == 2


# -- containment mode ----------------------------------------------------------------------

def containment_of(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b, assume_unique=True)) / len(a)


def run_local(docs: dict[str, str], **params) -> dict[str, dict]:
    """The stage through the in-process runner (same steps, fit and lineage as a job), in
    units of 5 documents; lineage rows by document id."""
    from workers.local import run_stage

    table = pa.table({"id": list(docs), "text": list(docs.values())})
    return run_stage(("minhash_dedup_v1", params), table, unit_rows=5).by_id("minhash_dedup_v1")


@pytest.fixture
def pasted():
    """Per level c, a short document A<c> (104 words: 100 5-grams) and a long one B<c> of
    its own random filler with A's first 4 + 100·c words pasted in the middle, so
    C(A ⊆ B) = c; plus an exact copy of B0.95 (a Jaccard duplicate, removed as one)."""
    rng = random.Random(3)

    def words(n: int) -> list[str]:
        return [rng.choice(VOCAB) for _ in range(n)]

    docs = {}
    for c in (0.3, 0.5, 0.7, 0.79, 0.8, 0.85, 0.95, 1.0):
        a = words(104)
        docs[f"A{c}"] = " ".join(a)
        docs[f"B{c}"] = " ".join(words(300) + a[:4 + round(100 * c)] + words(300))
    docs["B0.95copy"] = docs["B0.95"]
    sets = dict(zip(docs, sets_of(*docs.values()), strict=True))
    return docs, sets


def test_containment_removes_exactly_the_shorter_document_at_or_above_the_threshold(pasted):
    docs, sets = pasted
    levels = {k: containment_of(sets[k], sets["B" + k[1:]]) for k in docs if k.startswith("A")}
    assert levels["A0.79"] == pytest.approx(0.79) and levels["A0.8"] == pytest.approx(0.8)
    assert max(jaccard(sets[k], sets["B" + k[1:]]) for k in levels) < 0.2  # invisible to Jaccard
    d = run_local(docs, containment=0.8)
    for a, c in levels.items():
        row = d[a]
        if c >= 0.8:
            assert (row["decision"], row["reason"], row["survivor_id"]) == ("drop", "minhash.contained", "B" + a[1:])
            assert row["scores"]["containment"] == pytest.approx(c)
        else:
            assert row["decision"] == "keep" and row["survivor_id"] is None and "containment" not in row["scores"]
    for b in (k for k in docs if k.startswith("B") and k != "B0.95copy"):  # the longer document is kept
        assert d[b]["decision"] == "keep" and "containment" not in d[b]["scores"]
    # the Jaccard duplicate keeps its treatment; its survivor is the container
    assert (d["B0.95copy"]["reason"], d["B0.95copy"]["survivor_id"]) == ("minhash.duplicate", "B0.95")
    reasons = [r["reason"] for r in d.values() if r["reason"]]
    assert sorted(reasons) == ["minhash.contained"] * 4 + ["minhash.duplicate"]

    plain = run_local(docs)  # containment off: only the exact copy goes, as before
    assert [k for k, r in plain.items() if r["decision"] == "drop"] == ["B0.95copy"]
    assert all("containment" not in r["scores"] for r in plain.values())


def test_containment_chain_and_equal_length_ties():
    """A ⊂ B ⊂ D: both A and B go, and A's container is D (kept) rather than B (itself
    contained). E1/E2 have the same number of 5-grams and share 86 of 106 (C = 0.81,
    J = 0.68): the later one in input order goes."""
    rng = random.Random(8)

    def words(n: int) -> list[str]:
        return [rng.choice(VOCAB) for _ in range(n)]

    a = words(60)
    b = words(70) + a + words(70)
    x = words(90)
    docs = {"A": " ".join(a), "B": " ".join(b), "D": " ".join(words(300) + b + words(300)),
            "E1": " ".join(x + words(20)), "E2": " ".join(x + words(20)), "G": " ".join(words(200))}
    sets = dict(zip(docs, sets_of(*docs.values()), strict=True))
    assert len(sets["E1"]) == len(sets["E2"]) and containment_of(sets["E2"], sets["E1"]) == pytest.approx(86 / 106)
    d = run_local(docs, containment=0.8)
    assert {k: (r["decision"], r["reason"], r["survivor_id"]) for k, r in d.items()} == {
        "A": ("drop", "minhash.contained", "D"), "B": ("drop", "minhash.contained", "D"), "D": ("keep", None, None),
        "E1": ("keep", None, None), "E2": ("drop", "minhash.contained", "E1"), "G": ("keep", None, None)}
    assert d["A"]["scores"]["containment"] == 1.0 and d["E2"]["scores"]["containment"] == pytest.approx(86 / 106)
    assert {k for k, r in run_local(docs, containment=0.9).items() if r["decision"] == "drop"} == {"A", "B"}


def test_containment_skips_boilerplate_ngrams_in_the_join(monkeypatch):
    """A header every document carries is above COMMON_NGRAM_DOCS (lowered to 3 here): it
    leaves the sample join, and A (header + passage) is still found inside B by the rest
    of its sample, while the documents sharing only the header stay."""
    import filters.minhash_fit

    monkeypatch.setattr(filters.minhash_fit, "COMMON_NGRAM_DOCS", 3)
    rng = random.Random(9)

    def words(n: int) -> list[str]:
        return [rng.choice(VOCAB) for _ in range(n)]

    header, passage = words(40), words(60)
    docs = {"A": " ".join(header + passage), "B": " ".join(header + words(200) + passage + words(100))}
    docs |= {f"O{i}": " ".join(header + words(300)) for i in range(5)}
    d = run_local(docs, containment=0.8, containment_sample=64)
    assert {k for k, r in d.items() if r["decision"] == "drop"} == {"A"} and d["A"]["survivor_id"] == "B"


def test_containment_cutoffs_keep_the_promised_recall():
    from scipy.stats import binom

    from filters.minhash_fit import CONTAINMENT_RECALL, containment_cutoffs

    for t in (0.5, 0.8, 0.95, 1.0):
        need = containment_cutoffs(t, 64)
        for k in range(1, 65):
            # a pair at C = t passes (a sample too small for that even at one hit needs one) ...
            assert binom.sf(need[k] - 1, k, t) >= CONTAINMENT_RECALL or need[k] == 1
            assert binom.sf(need[k], k, t) < CONTAINMENT_RECALL  # ... and it is the largest such cut
            assert need[k] <= np.ceil(t * k - 1e-9)  # a whole set (|A| ≤ k) at C ≥ t always passes
    assert containment_cutoffs(0.8, 32)[32] == 19 and containment_cutoffs(1.0, 32)[32] == 32
    assert not {"containment", "containment_sample"} & MinHashDedupV1.score_params  # a refit, never a rescore


@pytest.mark.usefixtures("ray_cluster")
def test_curate_why_names_the_containing_document(pasted, tmp_path):
    import json

    docs, _ = pasted
    write_shard(tmp_path / "in" / "a.parquet", list(docs.values()), ids=list(docs))
    spec = tmp_path / "contained.json"
    spec.write_text(json.dumps({"name": "contained", "inputs": [str(tmp_path / "in" / "*.parquet")],
                                "output": str(tmp_path / "out"),
                                "stages": [{"stage": "minhash_dedup_v1", "params": {"containment": 0.8}}]}))
    assert "minhash.contained" in run_cli("run", str(spec), "--no-progress").stdout
    why = run_cli("why", "contained", "A0.85").stdout
    assert "DROPPED at minhash_dedup_v1: minhash.contained" in why and "contained_in=B0.85" in why
    assert "containment=0.85" in why
    assert "survivor=B0.95" in run_cli("why", "contained", "B0.95copy").stdout


def test_a_preview_refuses_a_param_the_fit_reads_and_the_dashboard_offers_none(tmp_path):
    from service.dashboard.pages import _knobs
    from workers.local import run_stages
    from workers.reselect import ReselectError, preview_selection

    rng = random.Random(4)
    page = " ".join(f"w{rng.randrange(5000)}" for _ in range(200))
    docs = pa.table({"id": ["a", "b"], "text": [page, page.replace("w", "v", 1)]})
    run_stages(["minhash_dedup_v1"], docs, workdir=tmp_path)
    # The groups and survivors are the fit's: a new threshold over the stored fit would be wrong.
    with pytest.raises(ReselectError, match="changing threshold changes minhash_dedup_v1's corpus-wide fit") as err:
        preview_selection(tmp_path / "job", "minhash_dedup_v1", {"threshold": 0.5})
    assert err.value.code == "refit_param"
    knobs = {k["path"] for k in _knobs(MinHashDedupV1, MinHashDedupV1().params.model_dump())}
    assert not knobs & (MinHashDedupV1.fit_params | MinHashDedupV1.score_params)
