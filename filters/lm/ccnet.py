"""CCNet's text normaliser and KenLM scoring (``cc_net/text_normalizer.py``, ``perplexity.py``).

Per document: normalise (strip, lowercase, strip accents, digits → 0, map unicode
punctuation, delete non-printing characters 0–31 and 127–159), SentencePiece-encode,
then for each line ``lp += model.score(line)`` (log10, with ``<s>``/``</s>``) and
``n += len(line.split()) + 1`` (the ``+1`` is ``</s>``); ``ppl = 10 ** (-lp / n)``.

Newlines: CCNet's non-printing-character removal also deletes ``\\n``, gluing lines with
no space (``newlines="ccnet"``, needed only to reproduce CCNet's published cutoffs).
The default ``"space"`` turns newlines into spaces first, as methods.md advises;
``"lines"`` keeps them so every line is scored as its own sentence.
Deviation: CCNet rounds perplexity to one decimal; we keep the full value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

from filters.lm.base import DocScore, require

_UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"', "」": '"',
    "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!", "（": "(", "）": ")",
    "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">",
    "【": "[", "】": "]", "％": "%", "►": "-",
}
_PUNCT_TABLE = str.maketrans(_UNICODE_PUNCT)
_NON_PRINTING = str.maketrans({c: None for c in [*range(0, 32), *range(127, 160)]})
_DIGIT = re.compile(r"\d")


def normalize(text: str) -> str:
    """CCNet ``normalize(line, accent=True, case=True, numbers=True, punct=1)``."""
    text = text.strip()
    if not text:
        return text
    text = text.lower()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = _DIGIT.sub("0", text)
    text = text.translate(_PUNCT_TABLE)
    return text.translate(_NON_PRINTING)


def normalized_lines(text: str, newlines: str) -> list[str]:
    if newlines == "ccnet":
        lines = [normalize(text)]
    elif newlines == "space":
        lines = [normalize(text.replace("\r", " ").replace("\n", " "))]
    else:
        lines = [normalize(line) for line in text.splitlines()]
    return [line for line in lines if line]


class KenLMScorer:
    """SentencePiece (optional) + a KenLM ``.arpa``/``.bin`` model at user-given paths."""

    def __init__(self, model_path: str, sp_model: str | None, newlines: str = "space") -> None:
        kenlm = require("kenlm", "kenlm", "kenlm perplexity", "kenlm")
        for path in filter(None, (model_path, sp_model)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"kenlm backend: model file not found: {path}")
        self.model = kenlm.Model(model_path)
        self.sp = None
        if sp_model:
            spm = require("sentencepiece", "sentencepiece", "kenlm perplexity", "kenlm")
            self.sp = spm.SentencePieceProcessor(model_file=sp_model)
        self.newlines = newlines

    def _tokenize(self, line: str) -> str:
        # Without a SentencePiece model the normalised words are the tokens.
        return " ".join(self.sp.encode(line, out_type=str)) if self.sp is not None else " ".join(line.split())

    def score(self, texts: list[str]) -> list[DocScore | None]:
        out: list[DocScore | None] = []
        for text in texts:
            lines = [t for t in (self._tokenize(line) for line in normalized_lines(text, self.newlines)) if t]
            if not lines:
                out.append(None)
                continue
            log10_prob = sum(self.model.score(line, bos=True, eos=True) for line in lines)
            n = sum(len(line.split()) + 1 for line in lines)  # +1: </s> is predicted too
            nbytes = sum(len(line.encode()) for line in normalized_lines(text, self.newlines))
            out.append(DocScore(-log10_prob * math.log(10), n, n, nbytes, len(lines)))
        return out
