"""PreSelect's method as pure functions (Shum et al. 2025; ``../shared/methods.md`` §3),
for the ``preselect_v1`` stage: bits per character, predictive strength over a model
family, balanced labels, fastText training lines, and selection by character budget.

Deviations from the released code, on purpose:
- Each document's loss is its own (the released code packs documents, so early tokens
  see the previous document as context); callers score documents one at a time.
- Negatives are the lowest-S documents in ascending order (the released code's
  ``sorted_id2score`` is undefined); ties in S are broken by position in the sample.
- The budget cut ranks by (score descending, position) and keeps the shortest prefix
  reaching the budget, so tied scores cannot overshoot it by more than one document.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

POSITIVE, NEGATIVE = "__label__1", "__label__0"


class CalibrationError(ValueError):
    """The calibration sample cannot give a classifier (too few positives or negatives)."""


def bits_per_char(nll_nats: float, n_chars: int) -> float:
    """A document's summed negative log-likelihood (nats) per character, in bits."""
    if n_chars <= 0:
        raise ValueError("bits per character of an empty document is undefined")
    return nll_nats / (n_chars * math.log(2))


def predictive_strength(bpc: np.ndarray, benchmark: Sequence[float]) -> np.ndarray:
    """S(d) per document (rows of ``bpc``, one column per model): the fraction of model
    pairs with different benchmark scores whose order the document's BPC matches (the
    better model has the lower BPC). Ties in BPC count as discordant."""
    bpc = np.asarray(bpc, dtype=np.float64)
    scores = np.asarray(benchmark, dtype=np.float64)
    if bpc.ndim != 2 or bpc.shape[1] != len(scores):
        raise ValueError(f"bpc must be documents × {len(scores)} models, got shape {bpc.shape}")
    if len(scores) < 2:
        raise ValueError("predictive strength needs at least two models")
    if not np.isfinite(bpc).all():
        raise ValueError("every model must score every document (found a missing or non-finite BPC)")
    i, j = np.triu_indices(len(scores), k=1)
    ranked = scores[i] != scores[j]
    if not ranked.any():
        raise ValueError("all benchmark scores are equal: no pair orders the models")
    i, j = i[ranked], j[ranked]
    concordant = (scores[i] - scores[j]) * (bpc[:, i] - bpc[:, j]) < 0
    return concordant.sum(axis=1) / len(i)


def balanced_labels(strength: np.ndarray, min_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the positives (S = 1) and of as many negatives, the lowest S first."""
    strength = np.asarray(strength)
    positives = np.flatnonzero(strength >= 1.0)
    rest = np.flatnonzero(strength < 1.0)
    negatives = rest[np.argsort(strength[rest], kind="stable")][: len(positives)]
    if len(positives) < min_per_class or len(negatives) < min_per_class:
        raise CalibrationError(
            f"the calibration sample of {len(strength)} documents gives {len(positives)} positives (S = 1) and "
            f"{len(rest)} other documents; at least {min_per_class} of each are needed: calibrate on more "
            "documents, or use a model family whose losses disagree more")
    return positives, negatives


def training_lines(texts: Sequence[str], positives: Iterable[int], negatives: Iterable[int]) -> Iterator[str]:
    """fastText's supervised format, a document per line: newlines become spaces (the
    same as at scoring time; datatrove's default of deleting them is a known mismatch)."""
    for label, indices in ((POSITIVE, positives), (NEGATIVE, negatives)):
        for k in indices:
            yield f"{label} {fasttext_text(texts[k])}"


def fasttext_text(text: str) -> str:
    if "\n" not in text and "\r" not in text:  # cheaper than three replace calls on a short text
        return text
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def keep_by_char_budget(scores: np.ndarray, lengths: np.ndarray, fraction: float) -> np.ndarray:
    """A keep mask: documents by score (highest first, then position) until their characters
    reach ``fraction`` of all characters; the kept total exceeds the budget by less than
    one document."""
    scores, lengths = np.asarray(scores, dtype=np.float64), np.asarray(lengths, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ValueError(f"budget fraction must lie in (0, 1], got {fraction}")
    order = np.lexsort((np.arange(len(scores)), -scores))
    budget = fraction * lengths.sum()
    reached = np.cumsum(lengths[order]) >= budget
    n_keep = int(np.argmax(reached)) + 1 if reached.any() else len(order)
    keep = np.zeros(len(scores), dtype=bool)
    keep[order[:n_keep]] = True
    return keep
