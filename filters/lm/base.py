"""What every LM backend returns, and the windowing shared by the neural ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class MissingDependency(ImportError):
    """An optional library is not installed; the message names the package and the extra
    of curate that installs it."""


def require(module: str, package: str, backend: str, extra: str):
    """Import ``module`` or say which extra to install: ``pip install 'curate[<extra>]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"the {backend} backend needs the package {package!r}: pip install 'curate[{extra}]' "
            f"(or pip install {package}): {exc}"
        ) from None


@dataclass(frozen=True)
class DocScore:
    nll_nats: float  # -sum ln p(token) over the scored tokens
    tokens: int  # tokens scored (each predicted once)
    doc_tokens: int  # tokens in the whole document
    bytes: int  # UTF-8 bytes covered by the scored tokens
    windows: int  # forward passes (or KenLM lines) the document took

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_nats / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        # Tokenizer-independent: comparable across models with different vocabularies.
        return self.nll_nats / math.log(2) / max(1, self.bytes)

    @property
    def truncated(self) -> bool:
        return self.tokens < self.doc_tokens


class Scorer(Protocol):
    def score(self, texts: list[str]) -> list[DocScore | None]:
        """One entry per text; ``None`` for a text with nothing to score (empty)."""
        ...


@dataclass(frozen=True)
class Window:
    start: int  # first position of the window in the BOS-prefixed sequence
    end: int  # one past its last position
    scored: int  # how many of its last positions are scored (the rest is context)


def plan_windows(n_tokens: int, window: int, mode: str, stride: int, max_windows: int | None) -> list[Window]:
    """Windows over ``[BOS] + tokens`` (length ``n_tokens + 1``); each token is scored once.

    ``head``: one window, the first ``window`` tokens (later tokens are not scored).
    ``strided``: windows of ``window + 1`` positions every ``stride`` positions, each scoring
    only positions the previous one did not reach, so every token after the first window
    still has ``window + 1 - stride`` tokens of context (the Hugging Face "perplexity of
    fixed-length models" recipe). ``max_windows`` caps the cost of very long documents.
    """
    length = n_tokens + 1
    span = window + 1
    if mode == "head" or length <= span:
        end = min(length, span)
        return [Window(0, end, end - 1)]
    windows: list[Window] = []
    reached, start = 1, 0
    while reached < length and (max_windows is None or len(windows) < max_windows):
        end = min(start + span, length)
        windows.append(Window(start, end, end - reached))
        reached = end
        start += stride
    return windows


def score_with_windows(tokens_per_doc: list[list[int]], bos: int, logprob_fn, byte_len_fn, *, window: int, mode: str,
                       stride: int, max_windows: int | None, text_bytes: list[int]) -> list[DocScore | None]:
    """Shared driver for neural backends.

    ``logprob_fn(seqs)`` returns, per sequence, ``log p(seq[i+1] | seq[:i+1])`` for every
    ``i`` (length ``len(seq) - 1``). ``byte_len_fn(ids)`` gives the UTF-8 bytes those ids
    decode to (used only when a document is truncated).
    """
    plans: list[tuple[list[int], list[Window], int] | None] = []
    seqs: list[list[int]] = []
    for ids in tokens_per_doc:
        if not ids:
            plans.append(None)
            continue
        full = [bos, *ids]
        wins = plan_windows(len(ids), window, mode, stride, max_windows)
        plans.append((ids, wins, len(seqs)))
        seqs.extend(full[w.start:w.end] for w in wins)
    logprobs = logprob_fn(seqs) if seqs else []
    out: list[DocScore | None] = []
    for plan, nbytes in zip(plans, text_bytes, strict=True):
        if plan is None:
            out.append(None)
            continue
        ids, wins, first = plan
        nll, scored = 0.0, 0
        for k, w in enumerate(wins):
            lp = np.asarray(logprobs[first + k], dtype=np.float64)
            nll -= float(lp[len(lp) - w.scored:].sum())
            scored += w.scored
        covered = nbytes if scored >= len(ids) else byte_len_fn(ids[:scored])
        out.append(DocScore(nll, scored, len(ids), covered, len(wins)))
    return out


class WindowedScorer:
    """Shared ``score`` of the neural backends; subclasses set ``bos`` and the window
    settings, and implement ``tokenize``, ``_logprobs`` and ``_byte_len``."""

    bos: int
    window: int
    mode: str
    stride: int
    max_windows: int | None

    def _set_windows(self, window: int, mode: str, stride: int, max_windows: int | None) -> None:
        self.window, self.mode, self.stride, self.max_windows = window, mode, stride, max_windows

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def _logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        raise NotImplementedError

    def _byte_len(self, ids: list[int]) -> int:
        raise NotImplementedError

    def score(self, texts: list[str]) -> list[DocScore | None]:
        tokens = [self.tokenize(t) if t.strip() else [] for t in texts]
        return score_with_windows(tokens, self.bos, self._logprobs, self._byte_len, window=self.window,
                                  mode=self.mode, stride=self.stride, max_windows=self.max_windows,
                                  text_bytes=[len(t.encode("utf-8")) for t in texts])
