"""The neural backends against hand computations: a tiny transformers model built in
the test, and llama.cpp with the bundled SmolLM2 GGUF."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

WORDS = [f"w{i}" for i in range(30)]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 1-layer Llama with a word-level tokenizer, saved as a local HF folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    uniform = tmp_path_factory.mktemp("uniform-lm")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: p(token) = 1/V exactly
    model.save_pretrained(uniform)
    fast.save_pretrained(uniform)
    return {"random": folder, "uniform": uniform, "vocab": len(vocab), "torch": torch, "model_cls": transformers}


def _scorer(folder, **kw):
    from filters.perplexity import PerplexityParams, load_scorer

    return load_scorer(PerplexityParams.model_validate({"backend": "transformers", "model": str(folder), **kw}))


def test_uniform_model_has_perplexity_equal_to_vocab(tiny_lm):
    text = "w1 w2 w3 w4 w5"
    [score] = _scorer(tiny_lm["uniform"]).score([text])
    assert score.tokens == 5 and not score.truncated
    assert score.perplexity == pytest.approx(tiny_lm["vocab"], rel=1e-5)
    assert score.bits_per_byte == pytest.approx(5 * math.log2(tiny_lm["vocab"]) / len(text), rel=1e-5)


def test_transformers_nll_matches_a_direct_forward_pass(tiny_lm):
    torch, transformers = tiny_lm["torch"], tiny_lm["model_cls"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm["random"]).eval()
    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=n)) for n in (3, 17, 40, 9)]
    scores = _scorer(tiny_lm["random"], batch_tokens=64).score(texts)  # several padded batches
    for text, score in zip(texts, scores, strict=True):
        ids = torch.tensor([[1] + [WORDS.index(w) + 3 for w in text.split()]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        nll = -logp.gather(1, ids[0, 1:, None]).sum().item()
        assert score.nll_nats == pytest.approx(nll, rel=1e-4)
        assert score.perplexity == pytest.approx(math.exp(nll / (ids.shape[1] - 1)), rel=1e-4)


def test_strided_windows_cover_the_document_head_window_truncates(tiny_lm):
    text = " ".join(random.Random(2).choices(WORDS, k=50))
    [full] = _scorer(tiny_lm["random"], window=64).score([text])
    [head] = _scorer(tiny_lm["random"], window=16).score([text])
    [strided] = _scorer(tiny_lm["random"], window=16, window_mode="strided", stride=8).score([text])
    assert (full.tokens, full.truncated, full.windows) == (50, False, 1)
    assert (head.tokens, head.truncated) == (16, True)
    assert head.bytes == len(" ".join(text.split()[:16]).encode())
    assert (strided.tokens, strided.truncated, strided.windows) == (50, False, 6)
    # Same tokens, less context per token: close to, but not exactly, the full-context score.
    assert strided.nll_nats != full.nll_nats and abs(strided.perplexity / full.perplexity - 1) < 0.5


def test_empty_text_scores_none(tiny_lm):
    assert _scorer(tiny_lm["random"]).score(["", "  \n", "w1"])[:2] == [None, None]


# ---------------------------------------------------------------- llama.cpp, bundled SmolLM2
@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp")
    from filters.lm.models import SMOLLM2, resolve_model
    from filters.perplexity import PerplexityParams, load_scorer

    resolve_model(SMOLLM2)  # names the package to install when it is missing
    return load_scorer(PerplexityParams.model_validate({"backend": "llama_cpp", "window": 128, "n_threads": 2}))


def test_llama_cpp_repeated_text_beats_shuffled_words(smollm2):
    sentence = "The river flows past the old mill and the children watch the boats go by."
    repeated = " ".join([sentence] * 6)
    words = repeated.split()
    random.Random(0).shuffle(words)
    rep, shuf, empty = smollm2.score([repeated, " ".join(words), " "])
    assert empty is None
    assert rep.perplexity < shuf.perplexity / 3  # a copy is predictable, a word salad is not
    assert rep.bits_per_byte < shuf.bits_per_byte


def test_llama_cpp_log_softmax_matches_numpy_reference(smollm2):
    from filters.lm.llama_cpp_backend import log_softmax_pick

    logits = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32) * 10
    targets = np.array([0, 3, 10, 4, 4])
    ref = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    assert np.allclose(log_softmax_pick(logits, targets), ref[np.arange(5), targets], atol=1e-4)


def test_llama_cpp_truncates_to_the_window(smollm2):
    text = " ".join(f"word{i}" for i in range(400))
    [score] = smollm2.score([text])
    assert score.tokens == 128 and score.doc_tokens > 128 and score.truncated
    assert 0 < score.bytes < len(text)


def test_window_beyond_the_trained_context_is_refused(tiny_lm):
    with pytest.raises(ValueError, match="window 2048 exceeds the context 1024"):
        _scorer(tiny_lm["random"], window=2048)
