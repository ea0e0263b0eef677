"""Interpolated modified Kneser-Ney n-gram LM over integer token ids (the ablation tool's fast tier).

The model follows Chen & Goodman (1998), "An empirical study of smoothing techniques for
language modeling", section 3.5 (interpolated, modified Kneser-Ney with three discounts).

Notation
--------
``N`` is the order, ``V`` the vocabulary size; tokens are ids in ``[0, V)``. For an n-gram
``h w`` (context ``h`` of ``k-1`` symbols, predicted token ``w``) at order ``k``:

* Counts. At the highest order ``k = N``, ``a(h w)`` is the raw number of times ``h w``
  occurs. At a lower order ``k < N``, ``a(h w)`` is the continuation count: how many
  distinct symbols ``x`` precede it, i.e. the number of distinct ``(k+1)``-grams ``x h w``
  seen (the begin marker counts as a symbol ``x``).
* Discounts. Per order, ``n_j`` is the number of distinct order-``k`` n-grams with
  ``a = j`` (``j = 1..4``). With ``Y = n1 / (n1 + 2 n2)``:
  ``D1 = 1 - 2 Y n2/n1``, ``D2 = 2 - 3 Y n3/n2``, ``D3+ = 3 - 4 Y n4/n3``; an n-gram with
  ``a = 1`` is discounted by ``D1``, with ``a = 2`` by ``D2``, with ``a >= 3`` by ``D3+``.
* Interpolation. With ``S(h) = sum_w a(h w)`` and ``N1(h), N2(h), N3+(h)`` the numbers of
  tokens ``w`` whose ``a(h w)`` is 1, 2 and at least 3,
  ``gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / S(h)`` and::

      P_k(w | h) = max(a(h w) - D(a(h w)), 0) / S(h) + gamma(h) * P_{k-1}(w | h')

  where ``h'`` is ``h`` without its first symbol. A context never seen at order ``k``
  (``S(h) = 0``) gives no evidence: ``P_k(w | h) = P_{k-1}(w | h')`` (full back-off).
  The recursion ends at ``P_0(w) = 1/V``, so every id in ``[0, V)`` gets a positive
  probability, and ``sum_w P_k(w | h) = 1`` for every context because the discounted mass
  of a context is exactly ``gamma(h) S(h)``.

Documents and the begin marker
------------------------------
Each document is preceded by ``N-1`` copies of a begin-of-document marker (``BOS_CONTEXT``,
``-1``; never a vocabulary id and never predicted), so n-grams never span two documents and
the first token is predicted from the context ``(BOS,) * (N-1)``. No end-of-document event
is modelled: a document's bits are exactly the bits of its own tokens.

:meth:`KneserNeyLM.prob` takes ``context`` as the document's preceding tokens: only the last
``N-1`` are used, and a shorter context means the document started there (it is
left-padded with begin markers, the same as :meth:`KneserNeyLM.log2_probs` does). Begin
markers may also be given explicitly, but only as a leading run.

Discount guards
---------------
A discount is estimated only when the count-of-counts it divides by is positive and the
estimate lies strictly inside ``(0, j)`` for ``D_j``; otherwise that one discount falls
back to ``j/2`` (0.5, 1, 1.5). Keeping every discount positive keeps ``gamma(h) > 0``, so
no token ever gets probability zero. ``KneserNeyLM.discounts`` shows the values used.

Where this deviates from KenLM's ``lmplz``
------------------------------------------
* No pruning, no quantisation, no ARPA/binary output; everything is held in memory.
* The lowest order interpolates with the uniform ``1/V`` over the caller's fixed vocabulary
  (every id gets its own share), not with KenLM's ``<unk>`` + observed-vocabulary uniform.
* ``N-1`` begin markers instead of one ``<s>``: KenLM keeps raw counts for lower-order
  n-grams that start with ``<s>`` (they cannot be extended to the left); here the padding
  gives every lower-order n-gram a left extension, so all lower orders use continuation
  counts, with the begin marker as one possible left symbol.
* No ``</s>`` token is appended or scored (see above).
* Bad discounts fall back per discount (above); KenLM stops with an error, or with
  ``--discount_fallback`` replaces all three discounts of that order.

Implementation
--------------
All documents are concatenated into one symbol stream (begin marker -> 0, token ``t`` ->
``t + 1``). An order-``k`` n-gram is identified by a dense id: its key is
``id(its first k-1 symbols) * (V + 1) + last symbol``, and its id is the key's rank among
the sorted distinct keys of that order (``np.unique``), so keys stay far below 2**63 for any
vocabulary. Scoring looks keys up with ``np.searchsorted``; everything is vectorised over
token positions.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

BOS_CONTEXT: Final[int] = -1
"""Begin-of-document marker allowed in :meth:`KneserNeyLM.prob` contexts; never a token id."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_FALLBACK_DISCOUNTS: Final[tuple[float, float, float]] = (0.5, 1.0, 1.5)
_SCORE_CHUNK_TOKENS: Final[int] = 1 << 20  # bits(): score this many tokens per vectorised pass


def estimate_discounts(n1: int, n2: int, n3: int, n4: int) -> tuple[float, float, float]:
    """Chen & Goodman's modified-KN discounts ``(D1, D2, D3+)`` from count-of-counts ``n1..n4``.

    A discount whose denominator is zero, or whose estimate is not strictly inside ``(0, j)``,
    falls back to ``j/2``.
    """
    if n1 + 2 * n2 <= 0:
        return _FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    nn = (n1, n2, n3, n4)
    out: list[float] = []
    for j in (1, 2, 3):
        d = j - (j + 1) * y * nn[j] / nn[j - 1] if nn[j - 1] > 0 else float("nan")
        out.append(d if 0.0 < d < j else _FALLBACK_DISCOUNTS[j - 1])
    return out[0], out[1], out[2]


def _as_tokens(doc: Sequence[int] | npt.ArrayLike, vocab_size: int) -> IntArray:
    arr = np.asarray(doc)
    if arr.ndim != 1:
        raise ValueError(f"a document must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} outside [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


class KneserNeyLM:
    """Interpolated modified Kneser-Ney LM of a given order over ids ``[0, vocab_size)``.

    ``fit`` estimates the model from scratch (it replaces any earlier fit). All evaluation
    methods raise ``ValueError`` before ``fit``.
    """

    def __init__(self, order: int, vocab_size: int) -> None:
        order = operator.index(order)
        vocab_size = operator.index(vocab_size)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.order: Final[int] = order
        self.vocab_size: Final[int] = vocab_size
        self._base = vocab_size + 1  # symbols: 0 = begin marker, t + 1 = token t
        self._fitted = False
        # Per order k (list index k-1):
        self._keys: list[IntArray] = []  # sorted distinct keys; an n-gram's id is its index here
        self._adisc: list[FloatArray] = []  # by n-gram id: max(a - D(a), 0)
        self._ctx_total: list[FloatArray] = []  # by context id (order k-1; one empty context at k=1): S(h)
        self._ctx_gamma_mass: list[FloatArray] = []  # by context id: D1 N1(h) + D2 N2(h) + D3+ N3+(h)
        self.discounts: list[tuple[float, float, float]] = []
        """``(D1, D2, D3+)`` used at each order (index 0 = unigrams), after ``fit``."""
        self.count_of_counts: list[tuple[int, int, int, int]] = []
        """``(n1, n2, n3, n4)`` of each order's (adjusted) counts, after ``fit``."""
        self._num_ngrams = 0

    # -- building -----------------------------------------------------------------------

    def _stream(self, docs: Iterable[IntArray]) -> IntArray:
        """Symbols of the documents, each preceded by ``order-1`` begin markers (0)."""
        pad = np.zeros(self.order - 1, dtype=np.int64)
        parts: list[IntArray] = []
        for tokens in docs:
            parts.append(pad)
            parts.append(tokens + 1)
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(parts)

    def _validated(self, docs: Iterable[Sequence[int]]) -> Iterator[IntArray]:
        for doc in docs:
            yield _as_tokens(doc, self.vocab_size)

    def fit(self, docs: Iterable[Sequence[int]]) -> KneserNeyLM:
        """Estimate the model from token-id documents; returns ``self``.

        Raises ``ValueError`` for an out-of-range or non-integer token id, or when the
        documents hold no tokens at all.
        """
        sym = self._stream(self._validated(docs))
        real = np.flatnonzero(sym)  # positions of tokens (begin markers are 0)
        if real.size == 0:
            raise ValueError("fit() got no tokens: every document was empty (or there were none)")
        n, base, order = sym.size, self._base, self.order

        # ids[k-1][i]: id of the order-k n-gram ending at position i (-1 where it would start
        # before the stream). Positions inside one document's padding may see n-grams that
        # reach into the previous document; those are never counted, only real positions are.
        ids: list[IntArray] = []
        keys_by_order: list[IntArray] = []
        for k in range(1, order + 1):
            if k == 1:
                key = sym
                valid = np.ones(n, dtype=bool)
            else:
                ctx = np.full(n, -1, dtype=np.int64)
                ctx[1:] = ids[-1][:-1]
                valid = ctx >= 0
                key = ctx * base + sym
            uniq, inv = np.unique(key[valid], return_inverse=True)
            idk = np.full(n, -1, dtype=np.int64)
            idk[valid] = inv.reshape(-1)
            ids.append(idk)
            keys_by_order.append(uniq.astype(np.int64, copy=False))

        self._keys, self._adisc, self._ctx_total, self._ctx_gamma_mass = [], [], [], []
        self.discounts, self.count_of_counts = [], []
        num_ngrams = 0
        for k in range(1, order + 1):
            keys = keys_by_order[k - 1]
            grams = ids[k - 1][real]
            if k == order:  # raw counts
                counts = np.bincount(grams, minlength=keys.size)
            else:  # continuation counts: distinct (k+1)-grams ending in this k-gram
                _, first = np.unique(ids[k][real], return_index=True)
                counts = np.bincount(grams[first], minlength=keys.size)
            cc = np.bincount(np.minimum(counts, 5), minlength=6)
            coc = (int(cc[1]), int(cc[2]), int(cc[3]), int(cc[4]))
            d1, d2, d3 = estimate_discounts(*coc)
            disc = np.select([counts == 1, counts == 2, counts >= 3], [d1, d2, d3], 0.0)
            n_ctx = 1 if k == 1 else keys_by_order[k - 2].size
            ctx_of = keys // base  # id of each n-gram's context at order k-1 (0 at k=1)
            self._keys.append(keys)
            self._adisc.append(np.maximum(counts - disc, 0.0))
            total = np.bincount(ctx_of, weights=counts.astype(np.float64), minlength=n_ctx)
            mass = np.bincount(ctx_of, weights=disc, minlength=n_ctx)
            self._ctx_total.append(np.asarray(total, dtype=np.float64))
            self._ctx_gamma_mass.append(np.asarray(mass, dtype=np.float64))
            self.discounts.append((d1, d2, d3))
            self.count_of_counts.append(coc)
            num_ngrams += int(np.count_nonzero(counts))
        self._num_ngrams = num_ngrams
        self._fitted = True
        return self

    # -- evaluation -----------------------------------------------------------------------

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise ValueError("KneserNeyLM is not fitted: call fit() before evaluating")

    def _probs(self, sym: IntArray, targets: IntArray) -> FloatArray:
        """P(symbol at each target position | up to order-1 previous symbols of the stream)."""
        n, base = sym.size, self._base
        p = np.full(targets.size, 1.0 / self.vocab_size)
        prev: IntArray | None = None
        for k in range(1, self.order + 1):
            keys = self._keys[k - 1]
            if prev is None:
                ctx = np.zeros(n, dtype=np.int64)
            else:
                ctx = np.full(n, -1, dtype=np.int64)
                ctx[1:] = prev[:-1]
            valid = ctx >= 0
            key = np.where(valid, ctx * base + sym, -1)
            idx = np.minimum(np.searchsorted(keys, key), keys.size - 1)
            idk = np.where(valid & (keys[idx] == key), idx, -1)

            h, g = ctx[targets], idk[targets]
            h_ok, g_ok = h >= 0, g >= 0
            h_safe, g_safe = np.where(h_ok, h, 0), np.where(g_ok, g, 0)
            total = np.where(h_ok, self._ctx_total[k - 1][h_safe], 0.0)
            mass = np.where(h_ok, self._ctx_gamma_mass[k - 1][h_safe], 0.0)
            adisc = np.where(g_ok, self._adisc[k - 1][g_safe], 0.0)
            seen = total > 0
            p = np.where(seen, (adisc + mass * p) / np.where(seen, total, 1.0), p)
            prev = idk
        return p

    def _score_docs(self, docs: list[IntArray]) -> FloatArray:
        sym = self._stream(docs)
        return np.log2(self._probs(sym, np.flatnonzero(sym)))

    def log2_probs(self, doc: Sequence[int]) -> FloatArray:
        """``log2 P(token_i | up to order-1 previous tokens of doc)`` for each token (float64)."""
        self._require_fitted()
        return self._score_docs([_as_tokens(doc, self.vocab_size)])

    def bits(self, docs: Iterable[Sequence[int]]) -> float:
        """Total ``-log2`` probability of every token of every document."""
        self._require_fitted()
        total = 0.0
        batch: list[IntArray] = []
        pending = 0
        for tokens in self._validated(docs):
            batch.append(tokens)
            pending += tokens.size
            if pending >= _SCORE_CHUNK_TOKENS:
                total -= float(self._score_docs(batch).sum())
                batch, pending = [], 0
        if pending:
            total -= float(self._score_docs(batch).sum())
        return total

    def prob(self, context: Sequence[int], token: int) -> float:
        """``P(token | context)``: ``context`` is the document's preceding tokens.

        Only the last ``order-1`` entries are used; a shorter context is the start of a
        document (left-padded with begin markers). ``BOS_CONTEXT`` may appear, but only as
        a leading run.
        """
        self._require_fitted()
        token = operator.index(token)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token} outside [0, {self.vocab_size})")
        ctx = [operator.index(c) for c in context]
        seen_token = False
        for c in ctx:
            if c == BOS_CONTEXT:
                if seen_token:
                    raise ValueError("BOS_CONTEXT may only lead a context, not follow a token")
            elif 0 <= c < self.vocab_size:
                seen_token = True
            else:
                raise ValueError(f"context id {c} outside [0, {self.vocab_size}) and not BOS_CONTEXT")
        width = self.order - 1
        ctx = ctx[max(0, len(ctx) - width):] if width else []
        syms = [0] * (width - len(ctx)) + [c + 1 for c in ctx] + [token + 1]  # BOS_CONTEXT + 1 == 0
        sym = np.asarray(syms, dtype=np.int64)
        return float(self._probs(sym, np.asarray([sym.size - 1]))[0])

    @property
    def num_ngrams(self) -> int:
        """Distinct n-grams with a positive (raw or continuation) count, all orders; 0 before fit."""
        return self._num_ngrams
