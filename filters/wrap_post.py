"""WRAP's output side (methods.md §5): strip the chat model's leading boilerplate ("Sure!
Here is a paraphrase:") and reject degenerate generations with a reason per chunk, so a
bad rephrasing is recorded, never silently kept. Pure: strings in, a verdict out.

Small instruct models loop, stop at the token limit, or echo their input; each of those
has its own reason. Thresholds are arguments so a stage can expose them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# A leading line that only announces the answer: "Sure!", "Here is a paraphrase:", "Here's a
# rewritten version of the paragraph ...:". Only whole first lines ending in a colon, or a
# short courtesy word, are stripped: a paraphrase that starts "Here is the city ..." stays.
_COURTESY = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|great)(?:[!.]|,(?=\s*here\b))\s*", re.I)
_ANNOUNCE = re.compile(
    r"^(?:here(?:'s| is| are)|below is|the following is|this is)\b[^\n]{0,160}"
    r"(?:paraphras|rephras|rewrit|version|simpl|conversation|question|format|summar|example)[^\n]{0,80}:\s*",
    re.I)
# A first line that comments on the input, then announces: "This text can be improved with a
# more polished language. Here's a revised version:" (seen from SmolLM2 on web text).
_COMMENT_THEN_ANNOUNCE = re.compile(
    r"^[^\n]{0,240}?[.!]\s+here(?:'s| is| are)\b[^\n]{0,120}"
    r"(?:paraphras|rephras|rewrit|revis|version|simpl|conversation|format|summar)[^\n]{0,80}:\s*", re.I)
_LABEL = re.compile(r"^(?:paraphrase|rephrased(?: text)?|rewritten(?: text)?|simplified(?: version)?|"
                    r"answer|output|sentence)\s*:\s*", re.I)


@dataclass(frozen=True)
class Verdict:
    text: str | None  # the cleaned output when accepted
    reason: str | None  # why it was rejected (``rephrase.<reason>``)
    stripped: str  # the boilerplate removed from the front ("" when none)


def strip_preamble(output: str) -> tuple[str, str]:
    """(cleaned output, what was removed); removes announcement lines repeatedly."""
    text = output.lstrip()
    removed = []
    while True:
        for pattern in (_COURTESY, _ANNOUNCE, _COMMENT_THEN_ANNOUNCE, _LABEL):
            m = pattern.match(text)
            if m and m.end() > 0:
                removed.append(text[:m.end()])
                text = text[m.end():].lstrip()
                break
        else:
            return text, "".join(removed).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    words = _words(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def check_output(output: str, chunk: str, prompt: str, finish_reason: str | None, *,
                 min_length_ratio: float = 0.25, max_repetition: float = 0.5) -> Verdict:
    """Accept or reject one generation for one chunk."""
    text, stripped = strip_preamble(output or "")
    if finish_reason == "length":
        return Verdict(None, "rephrase.truncated", stripped)  # stopped by the token limit: incomplete
    if not text.strip():
        return Verdict(None, "rephrase.empty_output", stripped)
    out_words, in_words = _words(text), _words(chunk)
    if repetition(text) > max_repetition:
        return Verdict(None, "rephrase.repetition", stripped)
    if prompt.strip() and prompt.strip().lower() in text.lower():
        return Verdict(None, "rephrase.echoed_prompt", stripped)
    if out_words == in_words:
        return Verdict(None, "rephrase.copied_input", stripped)
    if len(out_words) < min_length_ratio * len(in_words):
        return Verdict(None, "rephrase.too_short", stripped)
    return Verdict(text.strip(), None, stripped)
