import pyarrow as pa
import pytest
from conftest import GOOD

from filters.quality_rules import QualityRulesParams, QualityRulesV1, measure


def run(texts, **params):
    stage = QualityRulesV1(params)
    docs = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    scores = stage.score(docs)
    return stage.select(scores, None), scores


def test_defaults_are_goph_paper_thresholds():
    p = QualityRulesParams()
    assert (p.min_words, p.max_words) == (50, 100_000)
    assert (p.min_mean_word_length, p.max_mean_word_length) == (3, 10)
    assert p.max_hash_word_ratio == p.max_ellipsis_word_ratio == 0.1
    assert (p.max_bullet_line_fraction, p.max_ellipsis_line_fraction) == (0.9, 0.3)
    assert p.min_alpha_word_fraction == 0.8 and p.min_stop_words == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GOOD, None),
        ("Too short to be a document of any use.", "quality_rules.too_few_words"),
        (" ".join(["a an to of it is"] * 20), "quality_rules.short_mean_word_length"),
        (" ".join(["the extraordinarily incomprehensibilities"] * 30), "quality_rules.long_mean_word_length"),
        (GOOD + " #tag" * 20, "quality_rules.hash_ratio"),
        (GOOD + " more..." * 10, "quality_rules.ellipsis_ratio"),
        ("\n".join(["- the item of the list with words"] * 20), "quality_rules.bullet_lines"),
        ("\n".join([GOOD[:150] + "..."] * 2 + [GOOD]), "quality_rules.ellipsis_lines"),
        (" ".join(["the house of 1234 5678 9012 and"] * 15), "quality_rules.few_alpha_words"),
        (" ".join(["Cats sleep quietly during warm afternoons while dogs bark loudly outside."] * 8),
         "quality_rules.few_stop_words"),
    ],
)
def test_each_rule_has_its_own_reason(text, reason):
    sel, _ = run([text])
    assert sel.reason == [reason]
    assert sel.keep == [reason is None]


def test_thresholds_are_overridable_and_reselect_needs_no_rescore():
    short = "One two three four five six seven eight nine ten with the and."
    sel, scores = run([short])
    assert sel.reason == ["quality_rules.too_few_words"]
    relaxed = QualityRulesV1({"min_words": 10})
    assert relaxed.select(scores, None).keep == [True]


def test_measures_on_a_hand_counted_text():
    m = measure("The cat, the dog.\n- and #one...", QualityRulesParams())
    # tokens: The cat , the dog . - and # one ...  -> 6 words, 11 tokens
    assert m["word_count"] == 6
    assert m["mean_word_length"] == pytest.approx((3 + 3 + 3 + 3 + 3 + 3) / 6)
    assert m["hash_word_ratio"] == pytest.approx(1 / 6)
    assert m["ellipsis_word_ratio"] == pytest.approx(1 / 6)
    assert m["bullet_line_fraction"] == pytest.approx(1 / 2)
    assert m["ellipsis_line_fraction"] == pytest.approx(1 / 2)
    assert m["alpha_word_fraction"] == pytest.approx(6 / 11)
    assert m["stop_word_count"] == 3  # The, the, and (case-insensitive)


def test_empty_and_null_text_fail_cleanly():
    sel, _ = run(["", None])
    assert sel.reason == ["quality_rules.too_few_words"] * 2


def test_unknown_param_is_rejected():
    with pytest.raises(ValueError, match="min_wrods"):
        QualityRulesV1({"min_wrods": 3})


def test_the_vectorised_select_gives_each_document_its_first_failing_check():
    import numpy as np
    import pyarrow as pa

    from filters.quality_rules import QualityRulesV1, first_failure, measure

    stage = QualityRulesV1({"min_words": 30, "max_words": 90, "min_stop_words": 20})
    rng = np.random.default_rng(0)
    names = list(measure("", stage.params))
    # values around every threshold, so each check decides some documents
    table = pa.table({n: pa.array(rng.random(5000) * (120 if n in ("word_count", "stop_word_count") else 12
                                                       if n == "mean_word_length" else 1.2)) for n in names})
    sel = stage.select(table, None)
    expected = [first_failure(row, stage.params) for row in table.to_pylist()]
    assert sel.reason == expected and sel.keep == [r is None for r in expected]
    assert len(set(expected)) >= 8  # most reasons occur
