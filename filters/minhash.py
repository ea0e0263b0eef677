"""``minhash_dedup_v1``: MinHash near-duplicate removal with LSH banding and verified edges.

Score (per document, vectorised with numpy):
  * normalise (``normalise()``, each step switchable): lowercase; numbers → ``0`` (a
    run of Unicode decimal digits with an optional ``.``/``,`` decimal part); accents
    stripped (NFD, drop Mn); every character of Unicode category P* (punctuation) or
    S* (symbols), and every control that is not whitespace, → a space; whitespace
    collapsed. Words are the whitespace-separated tokens. Against datatrove's
    ``simplify_text`` (default ``TextNormConfig``; read in datatrove 0.10.1 and main):
    the steps and switches correspond (``lowercase``, ``norm_numbers``,
    ``remove_punctuation``, ``norm_unicode_diacritics``) and both replace punctuation
    by a space, so "state-of-the-art" → "state of the art" in both (datatrove before
    0.3.0 deleted it: "stateoftheart"). Differences: datatrove replaces only a fixed
    list (``PUNCTUATION``: ASCII punctuation, C0/C1 controls and ~40 CJK/typographic
    marks such as — – “ ” ’ « » … 。), we replace all of P*/S*, so symbols and other
    marks (€ © ™ ° × → ¿ ¡ ‘ · § । ॥, emoji) become spaces here and stay there
    ("12.50 €" → "0" here, "0 €" there); datatrove also takes ``،`` ``٫`` ``⎖`` ``⎗``
    ``⎘`` as decimal separators ("3٫5" → "0" there, "0 0" here); its MinHash stage
    splits words with a per-language word tokenizer, not on whitespace;
  * word n-grams (default 5) hashed to 64 bits. Deviation from datatrove, documented:
    instead of xxhash of each n-gram string, each distinct word is hashed once
    (xxh64) and an n-gram's hash is a splitmix64-finalised polynomial of its word
    hashes — the same set semantics and 64-bit collision odds, without a Python call
    per n-gram;
  * ``K = bands × rows`` hash functions ``h_k(x) = ((a_k·x + b_k) mod 2^64) >> 32``
    (multiply-add-shift, Dietzfelbinger et al.; ``a_k`` odd) with ``a, b`` drawn from
    ``np.random.RandomState(seed)``, so every worker gets identical 32-bit signatures.
    Deviation from datatrove/datasketch, documented: they compute ``(a·x + b) mod
    (2^61 − 1)``; the Mersenne reduction costs ~5× more in numpy than a shift, and a
    32-bit minimum is all a MinHash slot needs (collisions 2^-32);
  * one 64-bit key per band (xxh64 of the band's ``rows`` values).
Documents with fewer words than the n-gram size get no signature and the score flag
``too_short_to_compare`` (never a duplicate, never a drop).

Fit (corpus-wide, in ``filters/minhash_fit.py``, out of core over the score files): candidate
pairs share a band key; each is verified by the exact Jaccard of the two n-gram
sets (≥ ``threshold``); the connected components of the verified edges
(``scipy.sparse.csgraph``) are the clusters, as datatrove's union-find makes them.
Chains can drift (A~B~C~… with a low J(A, Z)), so inside a component a document is
removed only when its *own* Jaccard to the survivor it is assigned to is at least
``min_survivor_jaccard`` (default 0.5); otherwise it starts a cluster of its own among
the rest. No document is ever removed for a survivor it shares less than half its
n-grams with. Survivors follow ``survivor``.

Containment (``containment = t``, off by default; a fit parameter, so changing it never
rescores). Jaccard misses a short document A pasted into a long one B: J(A, B) is low,
but the containment C(A ⊆ B) = |A ∩ B| / |A| over the n-gram sets is high. After the
Jaccard step, among the documents it keeps (a removed Jaccard duplicate is never a
container or contained; its survivor stands for it), A is removed with reason
``minhash.contained`` when some B *ranks above* it (more n-grams; equal counts: B comes
earlier in input order) with exact C(A ⊆ B) ≥ t. Out of core, in SQL over the scores:
  * sample: A's ``containment_sample`` (k) smallest n-gram hashes (the stored sets are
    sorted and the hashes uniformly random, so a uniform sample without replacement; all
    of A when |A| < k);
  * join the samples with every kept document's full n-gram set (UNNEST of ``shingles``)
    on the hash; count hits per (A, B) with B ranking above A; an n-gram hash held by more
    than ``COMMON_NGRAM_DOCS`` (10,000) documents is left out of the join and of A's sample
    size, so boilerplate never makes it quadratic (recall only can suffer);
  * cut-off: a pair with k_A sampled hashes is a candidate when hits ≥ need(k_A), the
    largest m ≥ 1 with P[Binomial(k_A, t) ≥ m] ≥ 0.995 (``containment_cutoffs``; e.g.
    k = 32, t = 0.8: 19 hits). The hits of a pair at C ≥ t are (hypergeometric, more
    concentrated than) Binomial(k_A, C), so each such pair is a candidate with probability
    ≥ 0.995;
  * verify: every candidate's exact |A ∩ B| / |A| from the stored sets; only pairs with
    C ≥ t count, so no document is removed below t.
Each contained A gets one container: one not itself contained first, then the highest C,
then the earliest input order; its lineage has ``survivor_id`` = that container and the
score ``containment`` = the verified C (the container gets no score). Since a container
always ranks above what it contains, the top of every chain is kept. A Jaccard survivor
that is contained goes too (its duplicates keep pointing at it as their survivor).
Containment is not symmetric, so this is no replacement for Jaccard (an index such as
datasketch's MinHashLSHEnsemble estimates it from signatures, approximately and in
memory; the join here is exact after verification and runs out of core).
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field, model_validator

from filters.base import FIT, ID, SCORE, TEXT, Fitted, ScoreView, Selection, Stage, StageParams, scores_view
from filters.minhash_fit import fit_minhash

_NUMBERS = re.compile(r"\d+(?:[.,]\d+)?")


@lru_cache(maxsize=1)
def _unicode_table() -> list:
    """For str.translate, indexed by code point: punctuation (P*), symbols (S*) and
    controls → space, combining marks (Mn, after NFD) → deleted, the rest unchanged.
    A list, not a dict: str.translate looks it up ~2× faster."""
    table: list = list(range(sys.maxunicode + 1))
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] in "PS" or (cat == "Cc" and not chr(cp).isspace()):
            table[cp] = " "
        elif cat == "Mn":
            table[cp] = None
    return table


@lru_cache(maxsize=1)
def _punctuation_only() -> dict[int, str]:
    return {cp: " " for cp, v in enumerate(_unicode_table()) if v == " "}


class MinHashParams(StageParams):
    ngram: int = Field(5, ge=1, le=32)
    bands: int = Field(20, ge=1, le=512)
    rows: int = Field(6, ge=1, le=64)
    seed: int = 1
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard a candidate pair must reach to be an edge")
    min_survivor_jaccard: float = Field(
        0.5, ge=0, le=1, description="a document is removed only if its Jaccard to its survivor is at least this")
    verify: Literal["exact", "signature"] = "exact"
    containment: float | None = Field(
        None, gt=0, le=1, description="also remove a document whose n-grams are at least this much contained in "
        "a longer document (None: Jaccard only)")
    containment_sample: int = Field(32, ge=4, le=256, description="n-gram hashes sampled per document to find "
                                    "containment candidates (bottom-k)")
    survivor: str = Field("min_id", description="min_id | longest | best_score:<stage>.<score>")
    lowercase: bool = True
    numbers_to_zero: bool = True
    strip_punctuation: bool = True
    strip_accents: bool = True

    @model_validator(mode="after")
    def _survivor_rule(self) -> MinHashParams:
        if self.survivor not in ("min_id", "longest") and not re.fullmatch(r"best_score:\w+\.\w+", self.survivor):
            raise ValueError("survivor must be min_id, longest or best_score:<stage>.<score>")
        return self


# ASCII punctuation and controls → space, as one 256-byte table for bytes.translate.
_ASCII_PUNCT = bytes(
    ord(" ") if (chr(i) in string.punctuation or (i < 32 and not chr(i).isspace()) or i == 127) else i
    for i in range(256)
)


def normalise(text: str, p: MinHashParams) -> str:
    if p.lowercase:
        text = text.lower()
    if p.numbers_to_zero:
        text = _NUMBERS.sub("0", text)
    if text.isascii():  # fast path: no accents; punctuation through a byte table
        if p.strip_punctuation:
            text = text.encode("ascii").translate(_ASCII_PUNCT).decode("ascii")
    elif p.strip_punctuation and p.strip_accents:  # one pass: NFD, then punctuation and marks
        text = unicodedata.normalize("NFD", text).translate(_unicode_table())
    elif p.strip_punctuation:
        text = text.translate(_punctuation_only())
    elif p.strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return " ".join(text.split())


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(words: list[str], n: int, cache: dict[str, int]) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word n-grams."""
    if len(words) < n:
        return np.empty(0, np.uint64)
    for word in set(words).difference(cache):
        cache[word] = xxhash.xxh64_intdigest(word.encode())
    w = np.fromiter(map(cache.__getitem__, words), np.uint64, len(words))
    m = len(w) - n + 1
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc = acc * np.uint64(0x100000001B3) + w[i : i + m]
        return np.unique(_splitmix64(acc))


def shingle_sets(normalised: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``shingle_hashes`` of every document at once: (the sorted unique hashes of all
    documents, concatenated; offsets, ``len(normalised) + 1``). ``normalised`` is
    ``normalise()``'s output, whose words are separated by single spaces. Arrow splits
    and dictionary-encodes the words, so each distinct word is hashed once per call and
    no Python runs per word or per document; the hashes are those of ``shingle_hashes``."""
    docs = len(normalised)
    words = pc.split_pattern(pa.array(normalised, pa.large_string()), " ")
    counts = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    counts[np.array([not t for t in normalised], dtype=bool)] = 0  # "" splits into [""]: no words
    flat = pc.list_flatten(words)
    keep_word = np.repeat(counts > 0, pc.list_value_length(words).to_numpy(zero_copy_only=False))
    encoded = pc.dictionary_encode(flat.filter(pa.array(keep_word)))
    vocabulary = encoded.dictionary.to_pylist()
    word_hash = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in vocabulary), np.uint64, len(vocabulary))
    w = word_hash[encoded.indices.to_numpy(zero_copy_only=False)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    m = len(w) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64), np.zeros(docs + 1, np.int64)
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc = acc * np.uint64(0x100000001B3) + w[i : i + m]
        hashes = _splitmix64(acc)
    # The n-gram starting at word j belongs to its document if it ends inside it.
    doc = np.repeat(np.arange(docs), counts)[:m]
    valid = np.arange(m) + n <= starts[doc + 1]
    hashes = hashes[valid]
    bounds = np.zeros(docs + 1, np.int64)
    np.cumsum(np.bincount(doc[valid], minlength=docs), out=bounds[1:])
    # Sorted and unique per document: a sort per segment is cheaper than one lexsort of all.
    per_doc = [np.unique(hashes[bounds[i]:bounds[i + 1]]) for i in range(docs)]
    offsets = np.zeros(docs + 1, np.int64)
    np.cumsum([len(u) for u in per_doc], out=offsets[1:])
    return (np.concatenate(per_doc) if docs else np.empty(0, np.uint64)), offsets


@lru_cache(maxsize=8)
def permutations(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = gen.randint(0, 1 << 63, size=k, dtype=np.uint64)
    return a, b


def _permute(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``((a·x + b) mod 2^64) >> 32`` for every shingle × hash function (uint64 wrap)."""
    h = x[:, None] * a[None, :]
    h += b[None, :]
    h >>= np.uint64(32)
    return h


def signatures(sets: list[np.ndarray], k: int, seed: int, chunk: int = 4096) -> np.ndarray:
    """MinHash signatures (len(sets) × k, uint32) of non-empty sets, all in numpy."""
    a, b = permutations(k, seed)
    lengths = np.array([len(s) for s in sets], dtype=np.int64)
    if len(sets) == 0:
        return np.empty((0, k), np.uint32)
    flat = np.concatenate(sets)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.empty((len(sets), k), np.uint32)
    # Whole documents in chunks of ~`chunk` shingles: chunk × k × 8 bytes stays in cache.
    doc = 0
    with np.errstate(over="ignore"):
        while doc < len(sets):
            end = doc
            total = 0
            while end < len(sets) and (total == 0 or total + lengths[end] <= chunk):
                total += lengths[end]
                end += 1
            lo, hi = starts[doc], starts[end - 1] + lengths[end - 1]
            h = _permute(flat[lo:hi], a, b)
            out[doc:end] = np.minimum.reduceat(h, starts[doc:end] - lo, axis=0)
            doc = end
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (docs × bands)."""
    keys = np.empty((len(sig), bands), np.uint64)
    for j in range(bands):
        part = np.ascontiguousarray(sig[:, j * rows : (j + 1) * rows])
        keys[:, j] = [xxhash.xxh64_intdigest(row.tobytes(), seed=j) for row in part]
    return keys


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def collision_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one band) = 1 − (1 − s^r)^b."""
    return 1 - (1 - s**rows) ** bands


class MinHashDedupV1(Stage[MinHashParams]):
    name = "minhash_dedup_v1"
    Params = MinHashParams
    phases = (SCORE, FIT)
    reasons = ("minhash.duplicate", "minhash.contained")
    score_params = frozenset({"ngram", "bands", "rows", "seed", "lowercase", "numbers_to_zero",
                              "strip_punctuation", "strip_accents"})

    def score(self, docs: pa.Table) -> pa.Table:
        p = self.params
        texts = [t or "" for t in docs[TEXT].to_pylist()]
        flat, offsets = shingle_sets([normalise(t, p) for t in texts], p.ngram)
        sets = np.split(flat, offsets[1:-1]) if len(texts) else []
        comparable = [i for i, s in enumerate(sets) if len(s)]
        k = p.bands * p.rows
        sig = signatures([sets[i] for i in comparable], k, p.seed)
        keys = band_keys(sig, p.bands, p.rows)
        n = len(texts)
        sig_col: list = [None] * n
        key_col: list = [None] * n
        for j, i in enumerate(comparable):
            sig_col[i] = sig[j]
            key_col[i] = keys[j]
        return pa.table({
            "too_short_to_compare": pa.array([len(s) == 0 for s in sets], pa.bool_()),
            "n_shingles": pa.array([len(s) for s in sets], pa.int64()),
            "chars": pa.array([len(t) for t in texts], pa.int64()),
            "shingles": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat)),
            "signature": pa.array(sig_col, pa.list_(pa.uint32())),
            "band_keys": pa.array(key_col, pa.list_(pa.uint64())),
        })

    @classmethod
    def check_in_job(cls, params: StageParams, stages_before: list[str]) -> None:
        assert isinstance(params, MinHashParams)
        if params.survivor.startswith("best_score:"):
            stage = params.survivor.removeprefix("best_score:").split(".")[0]
            if stage not in stages_before:
                raise ValueError(f"params.survivor: {params.survivor!r} reads a score of {stage!r}, which does not run "
                                 f"before minhash_dedup_v1 (stages before it: {', '.join(stages_before)})")

    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        p = self.params
        return fit_minhash(scores_view(view, self.name), p.threshold, p.min_survivor_jaccard, p.verify, p.survivor,
                           p.bands * p.rows, p.containment, p.containment_sample)

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        if fitted is None or fitted.table is None:
            raise ValueError("minhash_dedup_v1.select needs the result of fit()")
        clusters = {row[ID]: row for row in fitted.table.to_pylist()}
        # A fit made without containment has no ``contained_in``: nothing is contained.
        containment = self.params.containment is not None
        keep, reason, cluster, survivor = [], [], [], []
        extra: dict[str, list[float | None]] = {"cluster_size": [], "survivor_jaccard": [], "max_jaccard": []}
        if containment:
            extra["containment"] = []
        for doc_id in scores[ID].to_pylist():
            c = clusters.get(doc_id)
            container = c.get("contained_in") if c and containment else None
            duplicate = c is not None and c["survivor_id"] is not None and c["survivor_id"] != doc_id
            keep.append(not (duplicate or container))
            reason.append("minhash.duplicate" if duplicate else "minhash.contained" if container else None)
            cluster.append(c["cluster_id"] if c else None)
            survivor.append(container or (c["survivor_id"] if c else None))
            extra["cluster_size"].append(float(c["cluster_size"]) if c and c["cluster_size"] else 1.0)
            extra["survivor_jaccard"].append(c["survivor_jaccard"] if c else None)
            extra["max_jaccard"].append(c["max_jaccard"] if c else None)
            if containment:
                extra["containment"].append(c["containment"] if c and container else None)
        return Selection(keep=keep, reason=reason, cluster_id=cluster, survivor_id=survivor, extra_scores=extra)
