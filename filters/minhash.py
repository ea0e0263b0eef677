"""``minhash_dedup_v1``: MinHash near-duplicate removal with LSH banding and verified edges.

Score (every document of a unit at once; the loops are compiled with numba, ``@njit(cache=True)``,
once per machine, and give exactly the values of the per-document definitions ``normalise``,
``shingle_hashes`` and the numpy formulas below, which the tests compare them with):
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
    splits words with a per-language word tokenizer, not on whitespace. An ASCII document
    (most of a web crawl) is normalised in one compiled pass over its bytes (numbers,
    then one lowercase + punctuation byte table; the word splitter takes any run of
    whitespace as one separator), with the same words as ``normalise()``; any other
    document goes through ``normalise()`` itself;
  * word n-grams (default 5) hashed to 64 bits. Deviation from datatrove, documented:
    instead of xxhash of each n-gram string, each word is hashed (xxh64) and an
    n-gram's hash is a splitmix64-finalised polynomial of its word hashes — the same
    set semantics and 64-bit collision odds, without hashing n-gram strings. Splitting
    and xxh64 (ported, bit-identical to the ``xxhash`` package) are one compiled loop
    over all documents (``filters/word_ngrams.py``, shared with decontam's
    ``ngrams_at``), the n-grams and each document's sorted unique set another;
  * ``K = bands × rows`` hash functions ``h_k(x) = ((a_k·x + b_k) mod 2^64) >> 32``
    (multiply-add-shift, Dietzfelbinger et al.; ``a_k`` odd) with ``a, b`` drawn from
    ``np.random.RandomState(seed)``, so every worker gets identical 32-bit signatures.
    Deviation from datatrove/datasketch, documented: they compute ``(a·x + b) mod
    (2^61 − 1)``; the Mersenne reduction costs ~5× more in numpy than a shift, and a
    32-bit minimum is all a MinHash slot needs (collisions 2^-32). Computed in a compiled
    loop over shingles × hash functions that keeps the running minima (it vectorises over
    the K functions), with numpy's uint64 wrap-around: the same values as the numpy
    formula ``((x[:, None] * a + b) >> 32).min(axis=0)``;
  * one 64-bit key per band (xxh64, seeded with the band's index, of the band's ``rows``
    values as little-endian uint32 bytes).
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

Against an index (``against = INDEX_DIR``, a fit parameter; ``curate index add`` publishes
a finished job's survivors, ``filters/minhash_index.py``): its hashing params (ngram,
bands, rows, seed, the normalisation switches) must equal the stage's (else ValueError
naming the param). DuckDB reads the live version's Parquet parts; a new document and an
indexed one sharing a band key at the same band position are a candidate, verified as
Jaccard pairs are (≥ max(``threshold``, ``min_survivor_jaccard``)). A new document with a
verified match is removed first, reason ``minhash.indexed_duplicate``, ``survivor_id`` the
most similar indexed document, ``cluster_id`` ``<job_id>:<its id>`` (job ids hold no
``:``); it then takes no part in the new documents' own clustering (nor containment), so
the rest of its cluster gets a survivor among the new documents. With ``min_id`` and the
index holding the lower ids, this removes exactly what one job over everything removes
among the new documents unless a chain links them (a new document within the threshold
of an indexed one only through a document of neither, or one the old job removed).
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numba
import numpy as np
import pyarrow as pa
import xxhash
from pydantic import Field, model_validator

from filters.base import (
    FIT,
    ID,
    ORDER,
    SCORE,
    TEXT,
    Fitted,
    OptionalInputPath,
    ScoreView,
    Selection,
    SqlEngine,
    Stage,
    StageParams,
    scores_view,
)
from filters.minhash_fit import band_key_rows, bucket_pairs, fit_minhash, verify_bucket
from filters.minhash_index import check_against, open_against
from filters.word_ngrams import ngram_hash, rolling_ngrams, utf8_buffers, word_hashes, xxh64

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
    against: OptionalInputPath = Field(
        None, description="a MinHash index folder (`curate index add`): also remove new documents that duplicate "
        "a document in it (reason minhash.indexed_duplicate); its ngram/bands/rows/seed/normalisation must match")
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
    """One document's normalised text, its words separated by single spaces: the
    definition. ``normalised_buffers`` gives the same words for many documents at once."""
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


@lru_cache(maxsize=4)
def _ascii_table(lowercase: bool, strip_punctuation: bool) -> np.ndarray:
    """Lowercasing and punctuation → space as one byte table (ASCII: lowercasing is A-Z → a-z)."""
    table = np.frombuffer(_ASCII_PUNCT if strip_punctuation else bytes(range(256)), np.uint8).copy()
    if lowercase:
        table[ord("A"):ord("Z") + 1] += 32
    return table


@numba.njit(cache=True)
def _normalise_ascii(data, offsets, ascii, table, numbers):
    """``normalise`` of the ASCII documents in one pass over their bytes: numbers → ``0``
    (the regex ``\\d+(?:[.,]\\d+)?`` as a scanner: leftmost, greedy; lowercasing does not
    touch digits, so it may come after), then each other byte through ``table``. Whitespace
    is left as it is: the word splitter takes any run of it as one separator, as
    ``" ".join(text.split())`` does. Non-ASCII documents (already normalised) are copied."""
    out = np.empty(len(data), np.uint8)  # numbers only shrink
    out_offsets = np.zeros(len(offsets), np.int64)
    k = 0
    for d in range(len(offsets) - 1):
        i, end = offsets[d], offsets[d + 1]
        if not ascii[d]:
            out[k:k + end - i] = data[i:end]
            k += end - i
            out_offsets[d + 1] = k
            continue
        while i < end:
            c = data[i]
            if numbers and 48 <= c <= 57:
                i += 1
                while i < end and 48 <= data[i] <= 57:
                    i += 1
                if i + 1 < end and (data[i] == 46 or data[i] == 44) and 48 <= data[i + 1] <= 57:
                    i += 2
                    while i < end and 48 <= data[i] <= 57:
                        i += 1
                out[k] = 48
            else:
                out[k] = table[c]
                i += 1
            k += 1
        out_offsets[d + 1] = k
    return out[:k], out_offsets


def normalised_buffers(texts: list[str], p: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes (uint8) and offsets (int64, ``len(texts) + 1``) of every document
    normalised: the words of each are exactly ``normalise()``'s, but separated by runs of
    any whitespace. An ASCII document (``str.isascii`` is O(1)) stays ASCII through
    lowercasing and numbers, so ``normalise()`` would take its byte-table branch for it;
    ``_normalise_ascii`` does those steps on the bytes of all such documents in one
    compiled pass (``normalise()`` spent most of its time collapsing whitespace and in the
    numbers regex). Any other document goes through ``normalise()`` itself, a non-ASCII text
    that lowercases to ASCII (the Kelvin sign) included."""
    ascii = np.fromiter((t.isascii() for t in texts), bool, len(texts))
    parts = [t.encode() if a else normalise(t, p).encode() for t, a in zip(texts, ascii, strict=True)]
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)), out=offsets[1:])
    data = np.frombuffer(b"".join(parts), np.uint8)
    return _normalise_ascii(data, offsets, ascii, _ascii_table(p.lowercase, p.strip_punctuation), p.numbers_to_zero)


def shingle_hashes(words: list[str], n: int, cache: dict[str, int]) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word n-grams of one document (the definition:
    xxh64 of each word, ``rolling_ngrams``)."""
    for word in set(words).difference(cache):
        cache[word] = xxhash.xxh64_intdigest(word.encode())
    return np.unique(rolling_ngrams(np.fromiter(map(cache.__getitem__, words), np.uint64, len(words)), n))


@numba.njit(inline="always")
def _insertion_sort(a, lo, hi):
    for i in range(lo + 1, hi):
        x = a[i]
        j = i - 1
        while j >= lo and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@numba.njit(cache=True)
def _sort_unique(seg, tmp, hist):
    """Sorts ``seg`` and moves its distinct values to the front; returns how many there are.
    ``tmp`` holds ≥ m values, ``hist`` ≥ 2m + 2.

    The n-gram hashes are uniformly random 64-bit values, so one counting pass on their top
    ⌈log2 m⌉ bits leaves about one value per bucket and a final insertion sort has almost
    nothing to move: 3-4× faster than numba's quicksort (``ndarray.sort``) on documents of a
    few hundred n-grams. Any input still comes out sorted; only the speed depends on the
    spread, so a bucket of more than 32 values (an adversarial document), a document over
    65,536 n-grams, or one of at most 16 go to ``ndarray.sort`` or a plain insertion sort."""
    m = len(seg)
    if m == 0:
        return 0
    if m <= 16:
        _insertion_sort(seg, 0, m)
        src = seg
    elif m > 1 << 16:
        seg.sort()
        src = seg
    else:
        bits = 0
        while (1 << bits) < m:
            bits += 1
        shift = np.uint64(64 - bits)
        buckets = 1 << bits
        hist[:buckets + 1] = 0
        for x in seg:
            hist[(x >> shift) + np.uint64(1)] += 1
        largest = 0
        for b in range(buckets):
            largest = max(largest, hist[b + 1])
            hist[b + 1] += hist[b]
        for x in seg:
            b = x >> shift
            tmp[hist[b]] = x
            hist[b] += 1
        if largest <= 32:
            _insertion_sort(tmp, 0, m)
        else:
            tmp[:m].sort()
        src = tmp
    seg[0] = src[0]
    u = 1
    for j in range(1, m):
        if src[j] != seg[u - 1]:
            seg[u] = src[j]
            u += 1
    return u


@numba.njit(cache=True)
def _unique_ngrams(words, counts, n):
    """Per document, its n-gram hashes (``ngrams_at``'s, from the word hashes) sorted and
    unique: (all documents' concatenated, offsets)."""
    total = 0
    longest = 1
    for c in counts:
        total += max(c - n + 1, 0)
        longest = max(longest, c - n + 1)
    out = np.empty(total, np.uint64)
    tmp = np.empty(longest, np.uint64)
    hist = np.empty(2 * longest + 2, np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    k = 0
    first = 0
    for d in range(len(counts)):
        m = counts[d] - n + 1
        if m > 0:
            seg = out[k:k + m]
            for j in range(m):
                seg[j] = ngram_hash(words, first + j, n)
            k += _sort_unique(seg, tmp, hist)
        offsets[d + 1] = k
        first += counts[d]
    return out[:k], offsets


def shingle_sets(normalised: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``shingle_hashes`` of every document at once: (the sorted unique hashes of all
    documents, concatenated; offsets, ``len(normalised) + 1``). ``normalised`` holds each
    document's words separated by whitespace (``normalise()``'s output). The n-grams are
    ``ngrams_at``'s (one compiled pass over all documents), made unique per document."""
    data, offsets = utf8_buffers(pa.array(normalised, pa.large_string()))
    return _unique_ngrams(*word_hashes(data, offsets), n)


@lru_cache(maxsize=8)
def permutations(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = gen.randint(0, 1 << 63, size=k, dtype=np.uint64)
    return a, b


@numba.njit(cache=True)
def _signatures(flat, offsets, a, b):
    """Row d: min over document d's hashes x of ``((a_k·x + b_k) mod 2^64) >> 32`` for each
    k (uint64 wrap-around, as numpy's); all ones for an empty document. The inner loop runs
    over k with the running minima in registers and vectorises (AVX-512 multiplies 8 uint64
    lanes at once); numpy's version had to write shingles × k uint64 to memory first."""
    k = len(a)
    out = np.empty((len(offsets) - 1, k), np.uint32)
    mins = np.empty(k, np.uint64)
    for d in range(len(offsets) - 1):
        mins[:] = np.uint64(0xFFFFFFFF)
        for i in range(offsets[d], offsets[d + 1]):
            x = flat[i]
            for j in range(k):
                h = (a[j] * x + b[j]) >> np.uint64(32)
                if h < mins[j]:
                    mins[j] = h
        for j in range(k):
            out[d, j] = mins[j]
    return out


def signatures(sets: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """MinHash signatures (len(sets) × k, uint32) of non-empty sets, in one compiled loop."""
    a, b = permutations(k, seed)
    offsets = np.zeros(len(sets) + 1, np.int64)
    np.cumsum([len(s) for s in sets], out=offsets[1:])
    flat = np.concatenate(sets) if sets else np.empty(0, np.uint64)
    return _signatures(flat.astype(np.uint64, copy=False), offsets, a, b)


@numba.njit(cache=True)
def _band_keys(sig, bands, rows):
    keys = np.empty((sig.shape[0], bands), np.uint64)
    raw = sig.view(np.uint8).reshape(sig.shape[0], sig.shape[1] * 4)
    for d in range(sig.shape[0]):
        for j in range(bands):
            keys[d, j] = xxh64(raw[d], j * rows * 4, (j + 1) * rows * 4, np.uint64(j))
    return keys


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (docs × bands): xxh64, seeded with the band's index, of the
    band's ``rows`` signature values as little-endian uint32 bytes."""
    return _band_keys(np.ascontiguousarray(sig, dtype="<u4"), bands, rows)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def collision_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one band) = 1 − (1 − s^r)^b."""
    return 1 - (1 - s**rows) ** bands


def _rows_or_null(rows: np.ndarray, present: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    """A list column: the next row of ``rows`` where ``present``, null elsewhere (no Python per row)."""
    offsets = np.zeros(len(present) + 1, np.int32)
    np.cumsum(present * rows.shape[1], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.ravel(), type_), mask=pa.array(~present))


class MinHashDedupV1(Stage[MinHashParams]):
    name = "minhash_dedup_v1"
    Params = MinHashParams
    phases = (SCORE, FIT)
    reasons = ("minhash.duplicate", "minhash.contained", "minhash.indexed_duplicate")
    sample_undercounts = True
    score_params = frozenset({"ngram", "bands", "rows", "seed", "lowercase", "numbers_to_zero",
                              "strip_punctuation", "strip_accents"})
    fit_params = frozenset({"threshold", "min_survivor_jaccard", "verify", "survivor", "containment",
                            "containment_sample", "against"})
    bucket_by = "band_keys"
    bucket_columns = ("shingles", "signature")

    def score(self, docs: pa.Table) -> pa.Table:
        p = self.params
        texts = [t or "" for t in docs[TEXT].to_pylist()]
        # Each part runs once over the whole unit in a compiled loop (see the module docstring),
        # and the list columns are built from flat arrays and offsets, not a Python list per row.
        flat, offsets = _unique_ngrams(*word_hashes(*normalised_buffers(texts, p)), p.ngram)
        n_shingles = np.diff(offsets)
        comparable = n_shingles > 0
        k = p.bands * p.rows
        sig = _signatures(flat, offsets, *permutations(k, p.seed))[comparable]
        keys = band_keys(sig, p.bands, p.rows)
        return pa.table({
            "too_short_to_compare": pa.array(~comparable),
            "n_shingles": pa.array(n_shingles, pa.int64()),
            "chars": pa.array([len(t) for t in texts], pa.int64()),
            "shingles": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat)),
            "signature": _rows_or_null(sig, comparable, pa.uint32()),
            "band_keys": _rows_or_null(keys, comparable, pa.uint64()),
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
        parts = None
        if p.against is not None:
            parts = open_against(p.against, artifacts, p.model_dump(), self.name).parts
        return fit_minhash(scores_view(view, self.name), p.threshold, p.min_survivor_jaccard, p.verify, p.survivor,
                           p.bands * p.rows, p.containment, p.containment_sample, parts)

    def preflight(self) -> None:
        if self.params.against is not None:
            check_against(self.params.against, self.params.model_dump(), self.name)

    def keys_per_doc(self) -> int:
        return self.params.bands

    def bucket_keys(self, scores: pa.Table) -> pa.Table:
        return band_key_rows(scores[ORDER].combine_chunks(), scores[self.bucket_by].combine_chunks())

    def bucket_pairs(self, sql: SqlEngine, keys: str) -> pa.Table:
        return bucket_pairs(sql, keys)

    def verify_bucket(self, sql: SqlEngine, pairs: str, ends: str | None) -> pa.Table:
        p = self.params
        assert ends is not None  # bucket_columns is not empty
        return verify_bucket(sql, pairs, ends, p.threshold, p.bands * p.rows, p.verify)

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
            indexed = c is not None and c.get("indexed_job") is not None
            duplicate = c is not None and c["survivor_id"] is not None and c["survivor_id"] != doc_id
            keep.append(not (duplicate or container))
            reason.append("minhash.indexed_duplicate" if indexed else "minhash.duplicate" if duplicate
                          else "minhash.contained" if container else None)
            cluster.append(c["cluster_id"] if c else None)
            survivor.append(container or (c["survivor_id"] if c else None))
            extra["cluster_size"].append(float(c["cluster_size"]) if c and c["cluster_size"] else 1.0)
            extra["survivor_jaccard"].append(c["survivor_jaccard"] if c else None)
            extra["max_jaccard"].append(c["max_jaccard"] if c else None)
            if containment:
                extra["containment"].append(c["containment"] if c and container else None)
        return Selection(keep=keep, reason=reason, cluster_id=cluster, survivor_id=survivor, extra_scores=extra)
