"""perplexity_v1 arithmetic: windows, selection modes and the KenLM / transformers
backends against hand computations. No Ray here; the pipeline runs are in
test_perplexity.py."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from filters.base import Fitted
from filters.lm.base import plan_windows
from filters.lm.ccnet import normalize
from filters.perplexity import PerplexityParams, PerplexityV1
from workers.fit_view import TableScoreView
from workers.spec import local_paths, parse_spec


# ---------------------------------------------------------------- windows
@pytest.mark.parametrize("n,window,stride", [(1, 8, 4), (8, 8, 4), (9, 8, 4), (100, 8, 4), (100, 8, 8), (37, 16, 5)])
def test_strided_windows_score_every_token_once(n, window, stride):
    wins = plan_windows(n, window, "strided", stride, None)
    scored = []
    for w in wins:
        assert w.end - w.start <= window + 1
        assert w.scored <= w.end - w.start - 1  # position 0 of a window is context, never scored
        scored.extend(range(w.end - w.scored, w.end))
    assert scored == list(range(1, n + 1))  # positions of the BOS-prefixed sequence


def test_head_window_truncates_and_max_windows_caps():
    assert plan_windows(100, 8, "head", 4, None) == plan_windows(100, 8, "head", 4, None)[:1]
    head = plan_windows(100, 8, "head", 4, None)[0]
    assert (head.start, head.end, head.scored) == (0, 9, 8)
    capped = plan_windows(100, 8, "strided", 4, 3)
    assert len(capped) == 3 and sum(w.scored for w in capped) == 8 + 4 + 4


# ---------------------------------------------------------------- selection
def _scores(values: list[float | None], chars: int | list[int] = 1000) -> pa.Table:
    return pa.table({
        "id": [f"d{i:05d}" for i in range(len(values))],
        "perplexity": pa.array(values, pa.float64()),
        "bits_per_byte": pa.array([None if v is None else v / 100 for v in values], pa.float64()),
        "chars": pa.array(chars if isinstance(chars, list) else [chars] * len(values), pa.int64()),
    })


def _fit(stage: PerplexityV1, table: pa.Table) -> Fitted:
    with TableScoreView(table) as view:
        return Fitted(stage.fit(view, None))


def _select(select: dict, values, shards: int = 3, **params):
    """Fit over all scores, then select unit by unit, as a job does."""
    stage = PerplexityV1({"select": select, **params})
    table = _scores(values)
    fitted = _fit(stage, table)
    keep, reasons = [], []
    for part in np.array_split(np.arange(len(values)), shards):
        sel = stage.select(table.take(part), fitted)
        keep += sel.keep
        reasons += sel.reason
    return keep, reasons


@pytest.mark.parametrize("n", [7, 100, 1001])
@pytest.mark.parametrize("band", ["low", "medium", "high"])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_band_keeps_ratio_r_of_the_right_percentiles(n, band, ratio):
    rng = np.random.default_rng(n)
    values = list(rng.permutation(np.arange(1, n + 1) * 1.5))
    keep, reasons = _select({"mode": "band", "band": band, "keep_ratio": ratio}, values)
    assert abs(sum(keep) / n - ratio) <= 1 / n
    kept = sorted(v for v, k in zip(values, keep, strict=True) if k)
    ranks = [sorted(values).index(v) for v in kept]
    assert ranks == list(range(ranks[0], ranks[0] + len(ranks)))  # one contiguous band of ranks
    if band == "low":
        assert ranks[0] == 0
    elif band == "high":
        assert ranks[-1] == n - 1
    else:  # centred: equal numbers below and above, ±1
        assert abs(ranks[0] - (n - 1 - ranks[-1])) <= 1
    assert {r for r, k in zip(reasons, keep, strict=True) if not k} <= {"perplexity.outside_band"}


@pytest.mark.parametrize("band", ["low", "medium", "high"])
def test_band_breaks_ties_by_id_so_the_ratio_holds(band):
    values = [5.0] * 20 + [1.0] * 5 + [9.0] * 5  # e.g. documents whose scored heads are identical
    keep, reasons = _select({"mode": "band", "band": band, "keep_ratio": 0.5}, values)
    assert sum(keep) == 15 and reasons.count("perplexity.outside_band") == 15
    kept = [i for i, k in enumerate(keep) if k]
    assert kept == {"low": [*range(10), *range(20, 25)], "medium": list(range(2, 17)),
                    "high": [*range(10, 20), *range(25, 30)]}[band]


def test_buckets_at_the_jobs_own_percentiles():
    values = [float(v) for v in range(1, 1001)]
    keep, reasons = _select({"mode": "buckets"}, values)
    assert reasons.count("perplexity.bucket_tail") == 400  # CCNet: tail above p60
    assert sum(keep) == 600 and reasons.count(None) == 600
    keep, reasons = _select({"mode": "buckets", "percentiles": [20, 50], "keep": ["head"]}, values)
    assert sum(keep) == 200
    assert reasons.count("perplexity.bucket_middle") == 300 and reasons.count("perplexity.bucket_tail") == 500


def test_fixed_bucket_cutoffs_and_bucket_recorded():
    stage = PerplexityV1({"select": {"mode": "buckets", "cutoffs": [340, 520]}})
    sel = stage.select(_scores([100.0, 340.0, 519.9, 520.0, 9000.0]), _fit(stage, _scores([1.0])))
    assert sel.reason == [None, None, None, "perplexity.bucket_tail", "perplexity.bucket_tail"]
    assert sel.extra_scores["bucket"] == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert sel.extra_scores["cutoff_low"] == [340] * 5 and sel.extra_scores["cutoff_high"] == [520] * 5


def test_threshold_empty_and_short_reasons():
    stage = PerplexityV1({"select": {"mode": "max_perplexity", "max": 100, "min": 2}, "min_chars": 300})
    table = _scores([50.0, 150.0, 1.5, None, 50.0], chars=[1000, 1000, 1000, 0, 10])
    sel = stage.select(table, None)
    assert sel.keep == [True, False, False, False, False]
    assert sel.reason == [None, "perplexity.too_high", "perplexity.too_low", "perplexity.empty", "perplexity.too_short"]


def test_too_short_documents_are_left_out_of_the_band():
    stage = PerplexityV1({"select": {"mode": "band", "band": "low", "keep_ratio": 0.5}, "min_chars": 300})
    table = _scores([float(v) for v in range(1, 11)], chars=[100] * 4 + [1000] * 6)  # 1-4 too short
    sel = stage.select(table, _fit(stage, table))
    assert sel.reason[:4] == ["perplexity.too_short"] * 4
    assert sel.keep == [False] * 4 + [True] * 3 + [False] * 3  # half of the 6 ranked documents


def test_selection_on_bits_per_byte():
    stage = PerplexityV1({"select": {"mode": "max_perplexity", "max": 0.5}, "score": "bits_per_byte"})
    assert stage.select(_scores([10.0, 60.0]), None).keep == [True, False]  # bpb 0.1 and 0.6


@pytest.mark.parametrize("params,field", [
    ({"window": 64, "stride": 65}, "stride"),
    ({"backend": "kenlm"}, "kenlm"),
    ({"num_gpus": 1, "backend": "llama_cpp"}, "num_gpus"),
    ({"select": {"mode": "band", "keep_ratio": 0}}, "keep_ratio"),
    ({"select": {"mode": "buckets", "percentiles": [60, 30]}}, "ascending"),
    ({"select": {"mode": "buckets", "percentiles": [30, 60], "cutoffs": [1, 2]}}, "either"),
    ({"select": {"mode": "nonsense"}}, "mode"),
])
def test_bad_params_are_rejected_with_the_field(params, field):
    with pytest.raises(ValidationError, match=field):
        PerplexityParams.model_validate(params)


# ---------------------------------------------------------------- KenLM (CCNet)
TOY_ARPA = """\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.3
-0.5\t</s>\t0
-0.6\ta\t-0.2
-0.7\tb\t-0.1

\\2-grams:
-0.2\t<s> a
-0.3\ta b
-0.4\tb </s>

\\end\\
"""


@pytest.fixture
def toy_arpa(tmp_path):
    pytest.importorskip("kenlm")
    path = tmp_path / "toy.arpa"
    path.write_text(TOY_ARPA)
    return str(path)


def _kenlm_stage(arpa, **params):
    return PerplexityV1({"backend": "kenlm", "model": arpa, **params})


def test_kenlm_matches_hand_computation(toy_arpa):
    # "a b": log10 p = p(a|<s>) + p(b|a) + p(</s>|b) = -0.2 - 0.3 - 0.4; n = 2 words + </s>
    # "b a": (bo(<s>) + p(b)) + (bo(b) + p(a)) + (bo(a) + p(</s>)) = -1.0 - 0.7 - 0.7
    # "a b b a" (newlines → space): -0.2 - 0.3 + (bo(b)+p(b)) -0.8 + (bo(b)+p(a)) -0.7 + (bo(a)+p(</s>)) -0.7
    texts = ["A  b", "a b\nb a", "a b\nb a"]
    lines = _kenlm_stage(toy_arpa, kenlm_newlines="lines").score(pa.table({"id": ["x", "y", "z"], "text": texts}))
    space = _kenlm_stage(toy_arpa).score(pa.table({"id": ["y"], "text": ["a b\nb a"]}))
    assert lines["perplexity"][0].as_py() == pytest.approx(10 ** (0.9 / 3), rel=1e-6)
    assert lines["perplexity"][1].as_py() == pytest.approx(10 ** (3.3 / 6), rel=1e-6)  # per line, +1 </s> each
    assert lines["tokens"][1].as_py() == 6
    assert space["perplexity"][0].as_py() == pytest.approx(10 ** (2.7 / 5), rel=1e-6)
    assert space["bits_per_byte"][0].as_py() == pytest.approx(2.7 * math.log2(10) / len("a b b a"), rel=1e-6)


def test_relative_model_paths_become_absolute(toy_arpa, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # toy.arpa lives here
    spec = parse_spec({"name": "k", "inputs": ["x.parquet"], "output": "o",
                       "stages": [{"stage": "perplexity_v1", "params": {"backend": "kenlm", "model": "toy.arpa"}}]})
    assert spec.stages[0].params["model"] == "toy.arpa"  # parsing never touches the filesystem
    # Ray actors run elsewhere: the CLI's path rule makes it absolute.
    assert local_paths(spec).stages[0].params["model"] == toy_arpa


def test_kenlm_ccnet_newline_quirk_glues_lines(toy_arpa):
    # CCNet deletes "\n" with the other non-printing characters: "a b\nb a" → "a bb a".
    out = _kenlm_stage(toy_arpa, kenlm_newlines="ccnet").score(pa.table({"id": ["x"], "text": ["a b\nb a"]}))
    assert out["tokens"][0].as_py() == 4  # "a", "bb" (<unk>), "a", </s>


def test_kenlm_empty_document_is_flagged(toy_arpa):
    out = _kenlm_stage(toy_arpa).score(pa.table({"id": ["x", "y"], "text": ["   \n\t", "a"]}))
    assert out["empty"].to_pylist() == [True, False] and out["perplexity"][0].as_py() is None


def test_ccnet_normalizer():
    assert normalize("  Café DU 42 — «Ok»…\x07 ") == 'cafe du 00  -  "ok"...'  # "—" maps to " - "


def test_kenlm_with_sentencepiece_counts_pieces(toy_arpa, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    words = [f"w{i}{c}" for i in range(300) for c in "ab"]
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(3000)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=200,
                                   character_coverage=1.0, minloglevel=2)
    sp_model = str(tmp_path / "sp.model")
    out = _kenlm_stage(toy_arpa, sp_model=sp_model).score(pa.table({"id": ["x"], "text": ["w12a w7b w299a"]}))
    # CCNet normalises before encoding: digits become 0.
    pieces = spm.SentencePieceProcessor(model_file=sp_model).encode(normalize("w12a w7b w299a"), out_type=str)
    assert out["tokens"][0].as_py() == len(pieces) + 1
