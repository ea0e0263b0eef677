"""Word n-gram hashes of many documents at once, at every position.

Each word is hashed with xxh64 (seed 0) of its UTF-8 bytes; the hash of the n-gram starting
at word j is a splitmix64-finalised polynomial of its n word hashes (``rolling_ngrams``).
Words are the runs of non-whitespace characters, whitespace being what Python's
``str.isspace`` and Arrow's ``utf8_split_whitespace`` call whitespace (the same 29 code
points; ``test_minhash`` checks both).

All documents go through compiled loops (numba, ``@njit(cache=True)``: compiled once per
machine, loaded from the cache in every later process): one splits each document's UTF-8
bytes on whitespace and hashes every word (``xxh64``, a port of the reference algorithm,
bit-identical to the ``xxhash`` package), the next rolls the n-grams inside each document,
so nothing runs in Python per word, per n-gram or per document (``ngrams_at`` through
Arrow's split and dictionary took 2× as long on 2 kB documents, 3.4× on the man pages). The numpy ``splitmix64`` and
``rolling_ngrams`` are the reference formulas (and ``filters.bloom`` uses the former).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
_POLY = np.uint64(0x100000001B3)  # the n-gram polynomial's base
_SM1 = np.uint64(0x9E3779B97F4A7C15)
_SM2 = np.uint64(0xBF58476D1CE4E5B9)
_SM3 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _SM1
    x = (x ^ (x >> np.uint64(30))) * _SM2
    x = (x ^ (x >> np.uint64(27))) * _SM3
    return x ^ (x >> np.uint64(31))


def rolling_ngrams(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """The hash of every n-gram of a sequence of word hashes (len - n + 1 of them)."""
    m = len(word_hashes) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc = acc * _POLY + word_hashes[i : i + m]
        return splitmix64(acc)


# -- compiled parts (uint64 arithmetic wraps around in numba as in numpy) ----------------------
# Every constant and shift count is a np.uint64: numba, like numpy, turns uint64 mixed with a
# signed integer into float64.

@numba.njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(inline="always")
def _read64(buf, i):
    """Little-endian uint64 at buf[i:i + 8]."""
    v = np.uint64(0)
    for j in range(8):
        v |= np.uint64(buf[i + j]) << np.uint64(8 * j)
    return v


@numba.njit(inline="always")
def _read32(buf, i):
    v = np.uint64(0)
    for j in range(4):
        v |= np.uint64(buf[i + j]) << np.uint64(8 * j)
    return v


@numba.njit(inline="always")
def _round(acc, lane):
    return _rotl(acc + lane * _P2, 31) * _P1


@numba.njit(inline="always")
def _merge(h, v):
    return (h ^ _round(np.uint64(0), v)) * _P1 + _P4


@numba.njit(inline="always")
def _xxh64(buf, start, end, seed):
    p = start
    length = np.uint64(end - start)
    if end - start >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        while p + 32 <= end:
            v1 = _round(v1, _read64(buf, p))
            v2 = _round(v2, _read64(buf, p + 8))
            v3 = _round(v3, _read64(buf, p + 16))
            v4 = _round(v4, _read64(buf, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + _P5
    h += length
    while p + 8 <= end:
        h ^= _round(np.uint64(0), _read64(buf, p))
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= end:
        h ^= _read32(buf, p) * _P1
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h ^= np.uint64(buf[p]) * _P5
        h = _rotl(h, 11) * _P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@numba.njit(cache=True)
def xxh64(buf, start, end, seed):
    """XXH64 of ``buf[start:end]`` (a uint8 array), ``seed`` a uint64: the reference
    algorithm, the same value as ``xxhash.xxh64_intdigest(bytes(buf[start:end]), seed)``."""
    return _xxh64(buf, start, end, seed)


# Per byte: 1 an ASCII whitespace, 2 the lead byte of a possible non-ASCII whitespace
# character (checked by ``_space_at``), 0 never whitespace.
_SPACE_BYTE = np.zeros(256, np.uint8)
_SPACE_BYTE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = 1
_SPACE_BYTE[[0xC2, 0xE1, 0xE2, 0xE3]] = 2


@numba.njit(inline="always")
def _space_at(buf, i, end):
    """Bytes of the whitespace character starting at buf[i] (valid UTF-8), 0 if it is none.
    Python's str.isspace: \\t \\n \\v \\f \\r, \\x1c-\\x1f, space; U+0085, U+00A0 (2 bytes);
    U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 (3 bytes)."""
    c = buf[i]
    if c < 0x80:
        return 1 if (c == 0x20 or 0x09 <= c <= 0x0D or 0x1C <= c <= 0x1F) else 0
    if c == 0xC2:
        return 2 if i + 1 < end and (buf[i + 1] == 0x85 or buf[i + 1] == 0xA0) else 0
    if c < 0xE1 or c > 0xE3 or i + 2 >= end:
        return 0
    c1, c2 = buf[i + 1], buf[i + 2]
    if c == 0xE1:
        return 3 if c1 == 0x9A and c2 == 0x80 else 0
    if c == 0xE3:
        return 3 if c1 == 0x80 and c2 == 0x80 else 0
    if c1 == 0x80:  # E2 80 xx: U+2000-U+200A, U+2028, U+2029, U+202F
        return 3 if (c2 <= 0x8A or c2 == 0xA8 or c2 == 0xA9 or c2 == 0xAF) else 0
    return 3 if c1 == 0x81 and c2 == 0x9F else 0  # U+205F


@numba.njit(cache=True)
def _word_hashes(data, offsets, space_byte):
    docs = len(offsets) - 1
    # A document of L bytes has at most (L + 1) // 2 words (untouched pages cost nothing).
    out = np.empty(len(data) // 2 + docs + 1, np.uint64)
    counts = np.zeros(docs, np.int64)
    k = 0
    for d in range(docs):
        i, end = offsets[d], offsets[d + 1]
        first = k
        while i < end:
            c = space_byte[data[i]]
            if c == 1:
                i += 1
                continue
            if c == 2:
                s = _space_at(data, i, end)
                if s:
                    i += s
                    continue
            w = i
            i += 1
            while i < end:
                c = space_byte[data[i]]
                if c == 1 or (c == 2 and _space_at(data, i, end)):
                    break
                i += 1
            out[k] = _xxh64(data, w, i, np.uint64(0))
            k += 1
        counts[d] = k - first
    return out[:k], counts


def word_hashes(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xxh64 of every whitespace-separated word of every document (``data[offsets[d]:
    offsets[d + 1]]``, UTF-8): (the hashes in document order, then position; words per
    document). A byte table decides almost every byte; ``_space_at`` looks only at the
    lead bytes of the few multi-byte whitespace characters."""
    return _word_hashes(data, offsets, _SPACE_BYTE)


@numba.njit(inline="always")
def ngram_hash(words, j, n):
    """``rolling_ngrams``' hash of the n-gram words[j:j + n] (polynomial, then splitmix64)."""
    acc = np.uint64(0)
    for i in range(n):
        acc = acc * _POLY + words[j + i]
    x = acc + _SM1
    x = (x ^ (x >> np.uint64(30))) * _SM2
    x = (x ^ (x >> np.uint64(27))) * _SM3
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _ngrams_at(words, counts, n):
    total = 0
    for c in counts:
        total += max(c - n + 1, 0)
    hashes = np.empty(total, np.uint64)
    doc = np.empty(total, np.int64)
    start = np.empty(total, np.int64)
    k = 0
    first = 0
    for d in range(len(counts)):
        for j in range(counts[d] - n + 1):
            hashes[k] = ngram_hash(words, first + j, n)
            doc[k] = d
            start[k] = j
            k += 1
        first += counts[d]
    return hashes, doc, start


def utf8_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and int64 offsets of a string array (no copy for a large_string
    array without an offset; nulls are empty)."""
    arr = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    _, offs, data = arr.buffers()
    offsets = np.frombuffer(offs, np.int64, len(arr) + 1, arr.offset * 8)
    values = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    return values, offsets


def ngrams_at(spaced: list[str], n: int, lower: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every word n-gram of every document: (hashes, document index, start word within the
    document, words per document). ``spaced`` holds each document's words separated by
    whitespace; ``lower`` lowercases the words first (Arrow's ``utf8_lower``; lowercasing
    never makes or unmakes whitespace, so the whole text is lowercased). Hashes are in
    document order, then position."""
    arr = pa.array(spaced, pa.large_string())
    data, offsets = utf8_buffers(pc.utf8_lower(arr) if lower else arr)
    words, counts = word_hashes(data, offsets)
    hashes, doc, start = _ngrams_at(words, counts, n)
    return hashes, doc, start, counts
