"""PreSelect's method (methods.md §3): the hand examples, the label rule, the training
file format and the character budget."""

from __future__ import annotations

import numpy as np
import pytest

from filters.preselect_method import (
    CalibrationError,
    balanced_labels,
    bits_per_char,
    keep_by_char_budget,
    predictive_strength,
    training_lines,
)


def test_hand_examples_from_methods():
    s = predictive_strength(np.array([[1.30, 1.20, 1.10], [1.30, 1.10, 1.20]]), [60, 70, 80])
    assert s[0] == 1.0 and s[1] == pytest.approx(2 / 3)
    assert round(bits_per_char(69.3147, 100), 3) == 1.000


def test_ties_in_bpc_are_discordant_and_unranked_pairs_do_not_count():
    assert predictive_strength(np.array([[1.2, 1.2, 1.1]]), [60, 70, 80])[0] == pytest.approx(2 / 3)
    # models 0 and 1 share a benchmark score: only the 2 pairs with model 2 count
    assert predictive_strength(np.array([[1.3, 1.0, 1.1]]), [60, 60, 80])[0] == pytest.approx(1 / 2)


def test_four_models_on_a_synthetic_loss_matrix():
    rng = np.random.default_rng(0)
    benchmark = [50.0, 55.0, 60.0, 70.0]
    bpc = rng.uniform(0.8, 1.6, size=(500, 4))
    s = predictive_strength(bpc, benchmark)
    for row, got in zip(bpc, s, strict=True):  # brute force over the 6 pairs
        pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
        assert got == sum((benchmark[a] - benchmark[b]) * (row[a] - row[b]) < 0 for a, b in pairs) / 6
    assert set(np.round(s * 6).astype(int)) == set(range(7))  # every count 0..6 occurs: S has spread
    ordered = np.sort(bpc, axis=1)[:, ::-1]  # BPC falling as the benchmark rises: S = 1
    assert (predictive_strength(ordered, benchmark) == 1).all()


def test_missing_scores_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="every model must score every document"):
        predictive_strength(np.array([[1.0, np.nan]]), [1, 2])
    with pytest.raises(ValueError, match="documents × 3 models"):
        predictive_strength(np.ones((2, 2)), [1, 2, 3])


def test_negatives_are_the_lowest_strength_documents():
    s = np.array([1.0, 0.2, 1.0, 0.0, 0.5, 1.0, 0.2, 0.8])
    pos, neg = balanced_labels(s, min_per_class=2)
    assert list(pos) == [0, 2, 5] and list(neg) == [3, 1, 6]  # ascending S, ties by position


def test_too_small_a_sample_is_a_clear_error():
    with pytest.raises(CalibrationError, match=r"calibration sample of 4 documents gives 1 positives .* at least 5"):
        balanced_labels(np.array([1.0, 0.1, 0.2, 0.3]), min_per_class=5)


def test_training_lines_are_one_labelled_line_per_document():
    texts = ["first line\nsecond line", "windows\r\nnewline", "plain"]
    lines = list(training_lines(texts, [0, 2], [1]))
    assert lines == ["__label__1 first line second line", "__label__1 plain", "__label__0 windows newline"]
    assert all(line.startswith("__label__") and "\n" not in line and "\r" not in line for line in lines)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_kept_characters_match_the_budget_within_one_document(fraction):
    rng = np.random.default_rng(1)
    lengths = rng.integers(50, 5000, 400)
    scores = np.round(rng.uniform(size=400), 2)  # many ties
    keep = keep_by_char_budget(scores, lengths, fraction)
    kept, budget = lengths[keep].sum(), fraction * lengths.sum()
    assert budget <= kept < budget + lengths[keep].max()
    assert scores[keep].min() >= scores[~keep].max() if (~keep).any() else keep.all()
