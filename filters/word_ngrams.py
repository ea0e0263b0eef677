"""Word n-gram hashes of many documents at once, at every position.

Each distinct word is hashed once (xxh64); the hash of the n-gram starting at word j is a
splitmix64-finalised polynomial of its n word hashes, computed for all documents in one
numpy pass and masked where an n-gram would cross a document boundary. Arrow splits and
dictionary-encodes the words, so no Python runs per word or per n-gram.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash


def splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def rolling_ngrams(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """The hash of every n-gram of a sequence of word hashes (len - n + 1 of them)."""
    m = len(word_hashes) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc = acc * np.uint64(0x100000001B3) + word_hashes[i : i + m]
        return splitmix64(acc)


def ngrams_at(spaced: list[str], n: int, lower: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every word n-gram of every document: (hashes, document index, start word within the
    document, words per document). ``spaced`` holds each document's words separated by
    whitespace; ``lower`` lowercases the words first (Arrow's ``utf8_lower``). Hashes are
    in document order, then position."""
    docs = len(spaced)
    words = pc.utf8_split_whitespace(pa.array(spaced, pa.large_string()))
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(words)
    present = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    counts = np.bincount(np.repeat(np.arange(docs), lengths)[present], minlength=docs).astype(np.int64)
    flat = flat.filter(pa.array(present))
    encoded = pc.dictionary_encode(pc.utf8_lower(flat) if lower else flat)
    vocabulary = encoded.dictionary.to_pylist()
    word_hash = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in vocabulary), np.uint64, len(vocabulary))
    hashes = rolling_ngrams(word_hash[encoded.indices.to_numpy(zero_copy_only=False)], n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    m = len(hashes)
    doc = np.repeat(np.arange(docs), counts)[:m]
    start = np.arange(m) - starts[doc]
    valid = np.arange(m) + n <= starts[doc + 1]  # the n-gram ends inside its document
    return hashes[valid], doc[valid], start[valid], counts
