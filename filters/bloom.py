"""A Bloom filter over 64-bit hashes, in numpy (set and test a whole array at once).

Sized for ``n`` items at false-positive rate ``p``: ``m = ceil(-n ln p / (ln 2)^2)`` bits
and ``k = round(m / n · ln 2)`` probes (Bloom 1970; the usual optimum). Probe ``i`` of
hash ``h`` is ``(h + i·g) mod m`` with ``g = splitmix64(h) | 1`` (Kirsch–Mitzenmacher
double hashing: two hash functions are enough for the same asymptotic rate).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from filters.word_ngrams import splitmix64


@dataclass(frozen=True)
class BloomShape:
    bits: int
    probes: int
    items: int
    error_rate: float

    @classmethod
    def for_items(cls, n: int, error_rate: float) -> BloomShape:
        n = max(n, 1)
        bits = max(64, math.ceil(-n * math.log(error_rate) / math.log(2) ** 2))
        bits = -(-bits // 64) * 64
        return cls(bits, max(1, round(bits / n * math.log(2))), n, error_rate)

    def expected_error_rate(self) -> float:
        """The false-positive rate with ``items`` inserted: (1 - e^(-k n / m))^k."""
        return (1 - math.exp(-self.probes * self.items / self.bits)) ** self.probes


def _positions(hashes: np.ndarray, shape: BloomShape) -> np.ndarray:
    h = hashes.astype(np.uint64)
    g = splitmix64(h) | np.uint64(1)
    i = np.arange(shape.probes, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        return (h[None, :] + i * g[None, :]) % np.uint64(shape.bits)


def build(hashes: np.ndarray, shape: BloomShape, chunk: int = 1 << 20) -> np.ndarray:
    words = np.zeros(shape.bits // 64, np.uint64)
    for s in range(0, len(hashes), chunk):
        pos = _positions(hashes[s : s + chunk], shape).ravel()
        np.bitwise_or.at(words, (pos >> np.uint64(6)).astype(np.int64), np.uint64(1) << (pos & np.uint64(63)))
    return words


def contains(words: np.ndarray, shape: BloomShape, hashes: np.ndarray) -> np.ndarray:
    if len(hashes) == 0:
        return np.zeros(0, bool)
    pos = _positions(hashes, shape)
    bit = (words[(pos >> np.uint64(6)).astype(np.int64)] >> (pos & np.uint64(63))) & np.uint64(1)
    return bit.astype(bool).all(axis=0)


def save(folder: Path, name: str, words: np.ndarray, shape: BloomShape) -> None:
    np.save(folder / f"{name}.npy", words)
    (folder / f"{name}.json").write_text(json.dumps(shape.__dict__) + "\n")


def load(folder: Path, name: str) -> tuple[np.ndarray, BloomShape]:
    shape = BloomShape(**json.loads((folder / f"{name}.json").read_text()))
    return np.load(folder / f"{name}.npy", mmap_mode="r"), shape
