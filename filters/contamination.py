"""Word n-gram overlap between training text and an evaluation set (the GPT-3 13-gram
rule): a training document that shares any 13-word sequence with the eval set counts as
contaminated. Words are lowercased runs of letters and digits, so punctuation and the
spacing of pre-tokenised sets (WikiText's `` @-@ ``) do not hide a match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import xxhash

WORD = re.compile(r"[^\W_]+")
NGRAM = 13


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(text: str, n: int = NGRAM) -> set[int]:
    """64-bit hashes of the text's word n-grams (collisions: ~1e-10 among 10^9 n-grams)."""
    w = words(text)
    return {xxhash.xxh3_64_intdigest(" ".join(w[i:i + n]).encode()) for i in range(len(w) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    documents: int  # training documents checked
    contaminated: int  # of them, those sharing at least one n-gram with the eval set
    shared_ngrams: int  # distinct eval n-grams found in the training documents
    eval_docs_hit: int  # eval documents with at least one n-gram found


class EvalNgrams:
    """The n-grams of an eval set, to check training documents against."""

    def __init__(self, eval_texts: Iterable[str], n: int = NGRAM) -> None:
        self.n = n
        self.owners: dict[int, list[int]] = {}  # n-gram hash -> the eval documents holding it
        for k, text in enumerate(eval_texts):
            for h in ngram_hashes(text, n):
                self.owners.setdefault(h, []).append(k)

    def shared(self, text: str) -> set[int]:
        return ngram_hashes(text, self.n) & self.owners.keys()

    def overlap(self, shared_per_doc: list[set[int]]) -> Overlap:
        """The report over training documents whose shared n-grams are already known."""
        found: set[int] = set().union(*shared_per_doc)
        eval_docs = {k for h in found for k in self.owners[h]}
        return Overlap(len(shared_per_doc), sum(1 for hit in shared_per_doc if hit), len(found), len(eval_docs))

    def check(self, texts: Iterable[str]) -> tuple[Overlap, list[bool]]:
        """The overlap report and, per training document, whether it is contaminated."""
        shared = [self.shared(text) for text in texts]
        return self.overlap(shared), [bool(hit) for hit in shared]
