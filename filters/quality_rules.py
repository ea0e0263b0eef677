"""``quality_rules_v1``: the Gopher quality heuristics (Rae et al. 2021, appendix A),
computed as in datatrove's ``GopherQualityFilter`` and with its defaults.

Tokens are words (runs of word characters, joined by inner hyphens or apostrophes)
and symbol runs (punctuation), found by ``_TOKENS``; symbol tokens are left out of
the word count and the mean word length, as datatrove does. Deviations from
datatrove, on purpose:
  * a regex tokenizer instead of nltk/spaCy (an order of magnitude faster; it splits
    punctuation off words the same way for ordinary prose);
  * lines are split on ``\n`` only;
  * stop words are matched case-insensitively ("The" counts; the paper does not say
    otherwise, and sentence-initial stop words are common);
  * ``*`` and ``‣`` also count as bullets besides ``•`` and ``-``.
A document fails at the first rule that fails, in the order of ``reasons``; every
measure is stored, so re-selecting with other thresholds needs no rescoring.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from filters.base import TEXT, Fitted, Selection, Stage, StageParams


class QualityRulesParams(StageParams):
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_hash_word_ratio: float = 0.1
    max_ellipsis_word_ratio: float = 0.1
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")
    bullets: tuple[str, ...] = ("•", "-", "*", "‣")


# One scan finds every token; group 1 is set for words and empty for symbol runs.
_TOKENS = re.compile(r"(\w+(?:[-'’]\w+)*)|[^\w\s]+")
# Applied to the words joined by single spaces: words with no letter (numbers, "_").
_NO_LETTER_WORD = re.compile(r"(?<!\S)[\d_'’-]+(?!\S)")


def measure(text: str, params: QualityRulesParams) -> dict[str, float]:
    """All Gopher measures of one text, with as few Python-level loops as possible
    (regex scans and C string methods); lines are split on ``\n`` only."""
    tokens = _TOKENS.findall(text)
    words = [t for t in tokens if t]
    n_words, n_tokens = len(words), len(tokens)
    joined = " ".join(words)
    lines = [line for line in (raw.strip() for raw in text.split("\n")) if line]
    n_lines = len(lines)
    stop_words = frozenset(w.lower() for w in params.stop_words)
    ellipses = text.count("...") + text.count("…")
    return {
        "word_count": float(n_words),
        "mean_word_length": (len(joined) - (n_words - 1)) / n_words if n_words else 0.0,
        "hash_word_ratio": text.count("#") / n_words if n_words else 0.0,
        "ellipsis_word_ratio": ellipses / n_words if n_words else 0.0,
        "bullet_line_fraction": sum(line.startswith(params.bullets) for line in lines) / n_lines if n_lines else 0.0,
        "ellipsis_line_fraction": (
            sum(line.endswith(("...", "…")) for line in lines) / n_lines if n_lines else 0.0
        ),
        # Share of all tokens (punctuation included, as in datatrove) with a letter in them.
        "alpha_word_fraction": (n_words - len(_NO_LETTER_WORD.findall(joined))) / n_tokens if n_tokens else 0.0,
        "stop_word_count": float(sum(map(stop_words.__contains__, joined.lower().split()))),
    }


def checks(m: dict, p: QualityRulesParams) -> list[tuple]:
    """Gopher's checks in order, as (failed, reason); ``m`` holds one document's measures or
    arrays of a unit's (the comparisons then give masks)."""
    return [
        (m["word_count"] < p.min_words, "quality_rules.too_few_words"),
        (m["word_count"] > p.max_words, "quality_rules.too_many_words"),
        (m["mean_word_length"] < p.min_mean_word_length, "quality_rules.short_mean_word_length"),
        (m["mean_word_length"] > p.max_mean_word_length, "quality_rules.long_mean_word_length"),
        (m["hash_word_ratio"] > p.max_hash_word_ratio, "quality_rules.hash_ratio"),
        (m["ellipsis_word_ratio"] > p.max_ellipsis_word_ratio, "quality_rules.ellipsis_ratio"),
        (m["bullet_line_fraction"] > p.max_bullet_line_fraction, "quality_rules.bullet_lines"),
        (m["ellipsis_line_fraction"] > p.max_ellipsis_line_fraction, "quality_rules.ellipsis_lines"),
        (m["alpha_word_fraction"] < p.min_alpha_word_fraction, "quality_rules.few_alpha_words"),
        (m["stop_word_count"] < p.min_stop_words, "quality_rules.few_stop_words"),
    ]


def first_failure(m: dict[str, float], p: QualityRulesParams) -> str | None:
    return next((reason for failed, reason in checks(m, p) if failed), None)


class QualityRulesV1(Stage[QualityRulesParams]):
    name = "quality_rules_v1"
    Params = QualityRulesParams
    score_params = frozenset({"stop_words", "bullets"})
    reasons = (
        "quality_rules.too_few_words",
        "quality_rules.too_many_words",
        "quality_rules.short_mean_word_length",
        "quality_rules.long_mean_word_length",
        "quality_rules.hash_ratio",
        "quality_rules.ellipsis_ratio",
        "quality_rules.bullet_lines",
        "quality_rules.ellipsis_lines",
        "quality_rules.few_alpha_words",
        "quality_rules.few_stop_words",
    )

    def score(self, docs: pa.Table) -> pa.Table:
        rows = [measure(t or "", self.params) for t in docs[TEXT].to_pylist()]
        names = list(measure("", self.params))
        return pa.table({n: pa.array([r[n] for r in rows], pa.float64()) for n in names})

    def thresholds(self) -> dict[str, list[float]]:
        p = self.params
        return {"word_count": [p.min_words, p.max_words], "mean_word_length": [p.min_mean_word_length,
                                                                              p.max_mean_word_length],
                "hash_word_ratio": [p.max_hash_word_ratio], "ellipsis_word_ratio": [p.max_ellipsis_word_ratio],
                "bullet_line_fraction": [p.max_bullet_line_fraction],
                "ellipsis_line_fraction": [p.max_ellipsis_line_fraction],
                "alpha_word_fraction": [p.min_alpha_word_fraction], "stop_word_count": [p.min_stop_words]}

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        # Vectorised over the unit: the first failing check of each document, in the order of
        # ``checks`` (a what-if over a million documents re-selects in well under a second).
        p = self.params
        m = {n: scores[n].to_numpy(zero_copy_only=False) for n in measure("", p)}
        masks = checks(m, p)
        first = np.select([c for c, _ in masks], np.arange(len(masks)), default=-1)
        names = [r for _, r in masks]
        reasons = [names[k] if k >= 0 else None for k in first.tolist()]
        return Selection(keep=(first < 0).tolist(), reason=reasons)
