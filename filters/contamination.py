"""Word n-gram overlap between training text and an evaluation set (the GPT-3 13-gram
rule): a training document that shares any 13-word sequence with the eval set counts as
contaminated. Words are runs of letters and digits, lowercased, so punctuation and the
spacing of pre-tokenised sets (WikiText's `` @-@ ``) do not hide a match. ``decontam_v1``
and ``curate ablate`` share these words and hashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from filters.word_ngrams import ngrams_at

WORD = re.compile(r"[^\W_]+")
NGRAM = 13
# ASCII letters and digits lowercased, every other ASCII byte a space: for an ASCII text,
# one bytes.translate gives what WORD finds, ~10x faster than the regex.
_ASCII_WORDS = bytes((ord(chr(i).lower()) if chr(i).isalnum() else 32) for i in range(128)) + b" " * 128


def word_runs(text: str) -> str:
    """The text's words separated by whitespace (``ngrams_at(lower=True)`` lowercases them)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii")
    return " ".join(WORD.findall(text))


def words(text: str) -> list[str]:
    """The words as the n-grams see them: lowercased runs of letters and digits."""
    return pc.utf8_lower(pc.utf8_split_whitespace(pa.array([word_runs(text)]))[0].values).to_pylist()


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character span of each word, in the order ``words`` lists them."""
    return [m.span() for m in WORD.finditer(text)]


def ngram_sets(texts: list[str], n: int = NGRAM) -> list[set[int]]:
    """The 64-bit hashes of each text's word n-grams (collisions: ~1e-10 among 10^9)."""
    h, doc, _, _ = ngrams_at([word_runs(t) for t in texts], n, lower=True)
    sets: list[set[int]] = [set() for _ in texts]
    for d, value in zip(doc.tolist(), h.tolist(), strict=True):
        sets[d].add(value)
    return sets


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
        for k, hashes in enumerate(ngram_sets(list(eval_texts), n)):
            for h in hashes:
                self.owners.setdefault(h, []).append(k)

    def shared_all(self, texts: list[str]) -> list[set[int]]:
        """Per text, the eval n-grams it holds."""
        return [hashes & self.owners.keys() for hashes in ngram_sets(texts, self.n)]

    def overlap(self, shared_per_doc: list[set[int]]) -> Overlap:
        """The report over training documents whose shared n-grams are already known."""
        found: set[int] = set().union(*shared_per_doc)
        eval_docs = {k for h in found for k in self.owners[h]}
        return Overlap(len(shared_per_doc), sum(1 for hit in shared_per_doc if hit), len(found), len(eval_docs))

    def check(self, texts: Iterable[str]) -> tuple[Overlap, list[bool]]:
        """The overlap report and, per training document, whether it is contaminated."""
        shared = self.shared_all(list(texts))
        return self.overlap(shared), [bool(hit) for hit in shared]
