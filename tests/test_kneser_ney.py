"""filters.lm.kneser_ney: normalisation, a hand computation, an independent dict-based
reference implementation, behaviour on held-out data, and input errors. No Ray here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest

from filters.lm.kneser_ney import BOS_CONTEXT, KneserNeyLM

# Tokens 10 and 11 never occur in training, so contexts holding them are unseen.
V_SMALL = 12


def _random_corpus(seed: int, n_docs: int = 30, vocab: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        length = int(rng.integers(0, 25))
        # a skewed distribution and some repeated bigrams, so all count-of-counts occur
        doc = rng.choice(vocab, size=length, p=np.arange(vocab, 0, -1) / (vocab * (vocab + 1) / 2)).tolist()
        docs.append(doc)
    docs.append([])  # an empty document is allowed and contributes nothing
    return docs


# ---------------------------------------------------------------- reference implementation
def _reference_discounts(n: Sequence[int]) -> tuple[float, ...]:
    """(D1, D2, D3+) straight from the formulas, with the documented guard: a discount whose
    count-of-count denominator is zero or that falls outside (0, j) becomes j/2."""
    n1, n2, n3, n4 = n
    out = []
    for j, (num, den) in enumerate([(n2, n1), (n3, n2), (n4, n3)], start=1):
        d = math.nan
        if n1 + 2 * n2 > 0 and den > 0:
            y = n1 / (n1 + 2 * n2)
            d = j - (j + 1) * y * num / den
        out.append(d if 0 < d < j else j / 2)
    return tuple(out)


class _ReferenceKN:
    """Slow, obviously-correct interpolated modified KN over tuples (begin marker = -1)."""

    def __init__(self, order: int, vocab: int, docs: list[list[int]]) -> None:
        self.order, self.vocab = order, vocab
        top: Counter[tuple[int, ...]] = Counter()
        for doc in docs:
            s = [BOS_CONTEXT] * (order - 1) + list(doc)
            for i in range(order - 1, len(s)):
                top[tuple(s[i - order + 1 : i + 1])] += 1
        self.counts: dict[int, dict[tuple[int, ...], int]] = {order: dict(top)}
        for k in range(order - 1, 0, -1):  # continuation counts: distinct left extensions
            self.counts[k] = dict(Counter(g[1:] for g in self.counts[k + 1]))
        self.discounts = {}
        for k, table in self.counts.items():
            coc = Counter(table.values())
            self.discounts[k] = _reference_discounts([coc[1], coc[2], coc[3], coc[4]])

    def _d(self, k: int, a: int) -> float:
        if a == 0:
            return 0.0
        return self.discounts[k][min(a, 3) - 1]

    def prob_k(self, k: int, ctx: tuple[int, ...], w: int) -> float:
        if k == 0:
            return 1.0 / self.vocab
        h = ctx[len(ctx) - (k - 1) :] if k > 1 else ()
        followers = {g[-1]: a for g, a in self.counts[k].items() if g[:-1] == h}
        lower = self.prob_k(k - 1, ctx, w)
        total = sum(followers.values())
        if total == 0:
            return lower
        a = followers.get(w, 0)
        mass = sum(self._d(k, b) for b in followers.values())
        return max(a - self._d(k, a), 0.0) / total + mass / total * lower

    def prob(self, context: Sequence[int], w: int) -> float:
        width = self.order - 1
        ctx = list(context)[-width:] if width else []
        ctx = [BOS_CONTEXT] * (width - len(ctx)) + ctx
        return self.prob_k(self.order, tuple(ctx), w)


# ---------------------------------------------------------------- (1) normalisation
CONTEXTS = [
    [],  # start of a document
    [BOS_CONTEXT],
    [BOS_CONTEXT, BOS_CONTEXT, BOS_CONTEXT, 0],  # explicit begin markers, then a token
    [0],
    [0, 1],
    [1, 0, 0],
    [3, 2, 1, 0, 0],  # longer than any order's context: only the tail is used
    [10],  # never-seen token: an unseen context at every order above 1
    [11, 10, 11],  # unseen at every order
    [0, 11],
]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_sum_to_one_over_the_vocabulary(order):
    lm = KneserNeyLM(order, V_SMALL).fit(_random_corpus(0))
    for ctx in CONTEXTS:
        probs = [lm.prob(ctx, t) for t in range(V_SMALL)]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-9), ctx
        assert min(probs) > 0.0, ctx  # the uniform base reaches every id, seen or not


# ---------------------------------------------------------------- (2) hand computation
def test_bigram_probabilities_by_hand():
    # Order 2, V = 4 (token 3 never occurs). Bigrams with the begin marker B:
    #   [0,0,0,0,0]     -> B0, 00 x4
    #   [1,1,1,2,2]     -> B1, 11 x2, 12, 22
    #   [2,1,2,0]       -> B2, 21, 12, 20
    #   [0,1,0,1,0,1]   -> B0, 01 x3, 10 x2
    docs = [[0, 0, 0, 0, 0], [1, 1, 1, 2, 2], [2, 1, 2, 0], [0, 1, 0, 1, 0, 1]]
    lm = KneserNeyLM(2, 4).fit(docs)
    f = Fraction
    bigram = {("B", 0): 2, ("B", 1): 1, ("B", 2): 1, (0, 0): 4, (0, 1): 3, (1, 0): 2, (1, 1): 2,
              (1, 2): 2, (2, 0): 1, (2, 1): 1, (2, 2): 1}
    # bigram count-of-counts: n1 = 5 (B1 B2 20 21 22), n2 = 4 (B0 10 11 12), n3 = 1 (01), n4 = 1 (00)
    n1, n2, n3, n4 = 5, 4, 1, 1
    y = f(n1, n1 + 2 * n2)
    d1, d2, d3 = 1 - 2 * y * f(n2, n1), 2 - 3 * y * f(n3, n2), 3 - 4 * y * f(n4, n3)
    assert (d1, d2, d3) == (f(5, 13), f(89, 52), f(19, 13))
    assert lm.discounts[1] == pytest.approx((float(d1), float(d2), float(d3)), abs=1e-15)

    # unigram continuation counts (distinct left symbols): 0 <- {B,0,1,2}, 1 <- {B,0,1,2}, 2 <- {B,1,2}
    cont = {0: 4, 1: 4, 2: 3, 3: 0}
    # unigram count-of-counts n1 = n2 = 0: every discount falls back, D3+ = 1.5 applies to all three
    assert lm.discounts[0] == (0.5, 1.0, 1.5)
    s1 = sum(cont.values())
    gamma1 = f(3, 2) * 3 / s1
    p1 = {w: f(max(c - f(3, 2), 0)) / s1 + gamma1 * f(1, 4) for w, c in cont.items()}
    assert p1 == {0: f(29, 88), 1: f(29, 88), 2: f(21, 88), 3: f(9, 88)}

    def disc(a: int) -> Fraction:
        return d1 if a == 1 else d2 if a == 2 else d3

    def p2(h: object, w: int) -> Fraction:
        followers = {ww: a for (hh, ww), a in bigram.items() if hh == h}
        total = sum(followers.values())
        if total == 0:
            return p1[w]
        a = followers.get(w, 0)
        mass = sum(disc(b) for b in followers.values())
        return (a - disc(a) if a else f(0)) / total + mass / total * p1[w]

    # P(1 | 0) = (3 - 19/13)/7 + (2 * 19/13 / 7) * 29/88
    assert p2(0, 1) == f(1431, 4004)
    assert lm.prob([0], 1) == pytest.approx(float(f(1431, 4004)), abs=1e-12)
    cases = [(0, 0), (1, 2), (1, 3), (2, 2), ("B", 0), ("B", 3), (3, 0)]  # (3, .): unseen context
    for h, w in cases:
        ctx = [] if h == "B" else [h]
        assert lm.prob(ctx, w) == pytest.approx(float(p2(h, w)), abs=1e-12), (h, w)
    assert lm.prob([3], 0) == pytest.approx(float(p1[0]), abs=1e-12)  # full back-off
    assert lm.num_ngrams == len(bigram) + 3  # 11 bigrams, 3 unigrams with a positive count


def test_trigram_probability_by_hand():
    # Order 3, V = 3, begin marker B:
    #   [0,1,2,0,1] -> B B 0 1 2 0 1 -> trigrams BB0, B01, 012, 120, 201
    #   [0,1,0,1]   -> B B 0 1 0 1   -> trigrams BB0, B01, 010, 101
    docs = [[0, 1, 2, 0, 1], [0, 1, 0, 1]]
    lm = KneserNeyLM(3, 3).fit(docs)
    f = Fraction
    # trigram raw counts: BB0 = 2, B01 = 2, the other five 1 -> n1 = 5, n2 = 2, n3 = n4 = 0
    y = f(5, 5 + 2 * 2)
    d1 = 1 - 2 * y * f(2, 5)
    assert d1 == f(5, 9)
    # D2 = 2 - 3y * 0/2 = 2 is not inside (0, 2) -> 1; D3+ divides by n3 = 0 -> 1.5
    assert lm.discounts[2] == pytest.approx((float(d1), 1.0, 1.5), abs=1e-15)
    # bigram continuation counts (distinct left symbols): B0 <- {B}, 01 <- {B, 2, 1}, 12 <- {0},
    # 20 <- {1}, 10 <- {0}. n1 = 4, n2 = 0, n3 = 1: Y = 1, D1 = 1 - 0 = 1 is not inside (0, 1) -> 0.5;
    # D2 divides by n2 = 0 -> 1; D3+ = 3 - 4 * 0/1 = 3 is not inside (0, 3) -> 1.5
    assert lm.discounts[1] == (0.5, 1.0, 1.5)
    # unigram continuation counts over the bigrams B0 01 12 20 10: 0 <- {B, 2, 1} = 3, 1 <- {0}, 2 <- {1}
    # n1 = 2, n2 = 0, n3 = 1: the same fallbacks
    assert lm.discounts[0] == (0.5, 1.0, 1.5)
    mass1 = f(1, 2) * 2 + f(3, 2) * 1  # two unigrams with a = 1, one with a = 3
    p1 = {0: (3 - f(3, 2)) / 5 + mass1 / 5 * f(1, 3), 1: (1 - f(1, 2)) / 5 + mass1 / 5 * f(1, 3)}
    p1[2] = p1[1]
    assert (p1[0], p1[1]) == (f(7, 15), f(4, 15))
    # P2(2 | 1): bigrams after 1 are 12 (a = 1) and 10 (a = 1): total 2, mass 2 * 0.5
    p2 = (1 - f(1, 2)) / 2 + 2 * f(1, 2) / 2 * p1[2]
    # P3(2 | 0 1): trigrams after "0 1" are 012 (1) and 010 (1): total 2, mass 2 * D1
    expected = (1 - d1) / 2 + 2 * d1 / 2 * p2
    assert expected == f(2, 9) + f(5, 9) * (f(1, 4) + f(2, 15))
    assert lm.prob([0, 1], 2) == pytest.approx(float(expected), abs=1e-12)
    assert lm.prob([2, 0, 1], 2) == pytest.approx(float(expected), abs=1e-12)  # only the last 2 count
    # "2 1" never occurs: P3 backs off fully to P2(1 | 1); context 1 has followers 2 and 0 only
    assert lm.prob([2, 1], 1) == pytest.approx(float(2 * f(1, 2) / 2 * p1[1]), abs=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_independent_reference_implementation(order):
    docs = _random_corpus(1, n_docs=12, vocab=6)
    lm = KneserNeyLM(order, 8).fit(docs)
    ref = _ReferenceKN(order, 8, docs)
    assert [lm.discounts[k - 1] for k in range(1, order + 1)] == pytest.approx(
        [ref.discounts[k] for k in range(1, order + 1)], abs=1e-15)
    assert lm.num_ngrams == sum(len(t) for t in ref.counts.values())
    contexts = [[], [BOS_CONTEXT, 2], [0], [5, 0], [1, 2, 3], [7], [0, 7, 1], *[d[:3] for d in docs if len(d) >= 3]]
    for ctx in contexts:
        for w in range(8):
            assert lm.prob(ctx, w) == pytest.approx(ref.prob(ctx, w), abs=1e-12), (ctx, w)


def test_ngrams_never_span_documents():
    apart = KneserNeyLM(2, 4).fit([[0, 1], [2, 3]])
    together = KneserNeyLM(2, 4).fit([[0, 1, 2, 3]])
    swapped = KneserNeyLM(2, 4).fit([[2, 3], [0, 1]])
    # "1 2" only exists when the documents are glued together
    assert together.prob([1], 2) > apart.prob([1], 2)
    for ctx in ([], [0], [1], [2], [3]):
        for w in range(4):
            assert apart.prob(ctx, w) == pytest.approx(swapped.prob(ctx, w), abs=1e-15)
    # context "1" is never followed by anything in `apart`: full back-off to the unigram level,
    # which is also what the never-seen-as-context "3" gets
    for w in range(4):
        assert apart.prob([1], w) == pytest.approx(apart.prob([3], w), abs=1e-15)


# ---------------------------------------------------------------- (3) held-out behaviour
def _pattern_docs(rng: np.random.Generator, n: int, pattern: list[int]) -> list[list[int]]:
    docs = []
    for _ in range(n):
        start, length = int(rng.integers(len(pattern))), int(rng.integers(20, 60))
        docs.append([pattern[(start + i) % len(pattern)] for i in range(length)])
    return docs


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_fewer_bits_on_held_out_text_of_the_same_kind(order):
    rng = np.random.default_rng(7)
    pattern = [0, 1, 2, 3, 4, 5, 2, 7, 3, 9, 8, 6, 1, 1]
    train = _pattern_docs(rng, 50, pattern)
    same = _pattern_docs(rng, 20, pattern)
    other = _pattern_docs(rng, 20, pattern[::-1])  # same unigram statistics, reversed order
    noise = [rng.integers(0, 16, size=40).tolist() for _ in range(20)]
    lm = KneserNeyLM(order, 16).fit(train)
    tokens_same, tokens_other = sum(map(len, same)), sum(map(len, other))
    bpt_same = lm.bits(same) / tokens_same
    bpt_other = lm.bits(other) / tokens_other
    bpt_noise = lm.bits(noise) / 800
    assert bpt_same < bpt_noise
    if order == 1:  # a unigram model cannot tell the order of tokens apart
        assert bpt_same == pytest.approx(bpt_other, rel=0.05)
    else:
        assert bpt_same < 0.5 * bpt_other
    if order >= 3:  # the pattern is (nearly) deterministic given two tokens
        assert bpt_same < 0.5


# ---------------------------------------------------------------- (4) log2_probs vs prob
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_log2_probs_match_prob_per_position(order):
    lm = KneserNeyLM(order, V_SMALL).fit(_random_corpus(2))
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, V_SMALL, size=n).tolist() for n in (0, 1, 2, 5, 17)] + _random_corpus(4, n_docs=3)
    for doc in docs:
        got = lm.log2_probs(doc)
        assert got.shape == (len(doc),) and got.dtype == np.float64
        want = [math.log2(lm.prob(doc[:i], doc[i])) for i in range(len(doc))]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    total = lm.bits(docs)
    assert total == pytest.approx(-sum(float(lm.log2_probs(d).sum()) for d in docs), rel=1e-12)
    assert lm.bits(np.asarray(d, dtype=np.uint16) for d in docs) == pytest.approx(total, rel=1e-12)
    assert lm.bits([]) == 0.0


def test_refit_replaces_the_model():
    lm = KneserNeyLM(2, 4)
    assert lm.fit([[0, 1, 0, 1]]) is lm
    first = lm.prob([0], 1)
    lm.fit([[2, 3, 2, 3]])
    assert lm.prob([0], 1) != first
    assert lm.prob([2], 3) > 0.5


# ---------------------------------------------------------------- (5) errors
def test_bad_construction():
    with pytest.raises(ValueError, match="order must be >= 1"):
        KneserNeyLM(0, 10)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        KneserNeyLM(2, 0)


def test_evaluating_before_fit():
    lm = KneserNeyLM(3, 10)
    assert lm.num_ngrams == 0
    for call in (lambda: lm.log2_probs([1, 2]), lambda: lm.prob([1], 2), lambda: lm.bits([[1, 2]])):
        with pytest.raises(ValueError, match="call fit"):
            call()


def test_token_ids_out_of_range():
    with pytest.raises(ValueError, match=r"token id 10 outside \[0, 10\)"):
        KneserNeyLM(2, 10).fit([[1, 2], [3, 10]])
    with pytest.raises(ValueError, match=r"token id -1 outside"):
        KneserNeyLM(2, 10).fit([[BOS_CONTEXT, 1]])  # the begin marker is not a token
    with pytest.raises(ValueError, match="must be integers"):
        KneserNeyLM(2, 10).fit([[1.5, 2.0]])
    with pytest.raises(ValueError, match="no tokens"):
        KneserNeyLM(2, 10).fit([[], []])
    lm = KneserNeyLM(2, 10).fit([[1, 2, 3]])
    with pytest.raises(ValueError, match="token id 12 outside"):
        lm.log2_probs([1, 12])
    with pytest.raises(ValueError, match="token id 10 outside"):
        lm.bits([[1], [10]])
    with pytest.raises(ValueError, match="token id 10 outside"):
        lm.prob([1], 10)
    with pytest.raises(ValueError, match="token id -1 outside"):
        lm.prob([1], BOS_CONTEXT)
    with pytest.raises(ValueError, match="context id 10 outside"):
        lm.prob([10], 1)
    with pytest.raises(ValueError, match="only lead"):
        lm.prob([1, BOS_CONTEXT], 2)
