"""WRAP's output checks (groundwork of rephrase_v1): boilerplate stripping on canned and on
real captured SmolLM2-135M-Instruct outputs, and a reason for every rejected generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from filters.wrap_chunks import STYLE_PROMPTS
from filters.wrap_post import check_output, repetition, strip_preamble

# Real generations: the bundled SmolLM2-135M-Instruct GGUF through llama-cpp-python's
# create_chat_completion (the GGUF's chat template), the paper's prompts, two stdlib
# docstring chunks x four styles, temperature 0.7, top_p 0.9, seed 0, max_tokens 400.
CAPTURED = json.loads((Path(__file__).parent / "data" / "wrap_smollm2_outputs.json").read_text())


@pytest.mark.parametrize(("output", "clean", "removed"), [
    ("Sure! Here is a paraphrase of the paragraph:\n\nThe cat sat.", "The cat sat.",
     "Sure! Here is a paraphrase of the paragraph:"),
    ("Sure, here's a simpler version:\nThe cat sat.", "The cat sat.", "Sure, here's a simpler version:"),
    ("Here's a rewritten version of the paragraph that uses a conversational tone:\nQuestion: Why?",
     "Question: Why?", "Here's a rewritten version of the paragraph that uses a conversational tone:"),
    ("Certainly. The river runs.", "The river runs.", "Certainly."),
    ("Paraphrase: The river runs.", "The river runs.", "Paraphrase:"),
    # a paraphrase that merely starts like an announcement is left alone
    ("Here is the city hall, built in 1900.", "Here is the city hall, built in 1900.", ""),
    ("Okay, so the river runs.", "Okay, so the river runs.", ""),
    # two real SmolLM2 outputs on C4 pages (rephrase_v1, medium style)
    ("This text can be improved with a more polished and engaging language. Here's a revised version:\n\n"
     "The text provides a detailed description of Kalanchoe.", "The text provides a detailed description of Kalanchoe.",
     "This text can be improved with a more polished and engaging language. Here's a revised version:"),
    ("Sentence: The ENVASS office sends a quarterly newsletter.", "The ENVASS office sends a quarterly newsletter.",
     "Sentence:"),
    # a comment that is content, followed by a colon that is not an announcement, stays
    ("The mill closed in 1900. Here is what remained: a wheel and a wall.",
     "The mill closed in 1900. Here is what remained: a wheel and a wall.", ""),
])
def test_boilerplate_is_stripped_and_only_boilerplate(output, clean, removed):
    assert strip_preamble(output) == (clean, removed)


def test_every_rejection_has_its_reason():
    chunk = "The river runs through the old town and past the mill, where the stone bridge still stands."
    prompt = STYLE_PROMPTS["medium"]
    ok = check_output("Sure! Here is a paraphrase:\nA river flows by the mill and under an old stone bridge "
                      "in the town.", chunk, prompt, "stop")
    assert ok.reason is None and ok.text.startswith("A river") and ok.stripped.startswith("Sure!")
    assert check_output("A river flows by.", chunk, prompt, "length").reason == "rephrase.truncated"
    assert check_output("Sure!\n   ", chunk, prompt, "stop").reason == "rephrase.empty_output"
    assert check_output("the mill " * 40, chunk, prompt, "stop").reason == "rephrase.repetition"
    assert check_output(f"{prompt}\n{chunk}", chunk, prompt, "stop").reason == "rephrase.echoed_prompt"
    assert check_output(chunk.upper(), chunk, prompt, "stop").reason == "rephrase.copied_input"
    assert check_output("A river.", chunk, prompt, "stop").reason == "rephrase.too_short"


def test_real_smollm2_outputs_loops_and_truncations_are_caught():
    pairs = CAPTURED["pairs"]
    verdicts = [check_output(p["output"], p["chunk"], STYLE_PROMPTS[p["style"]], p["finish_reason"]) for p in pairs]
    for p, v in zip(pairs, verdicts, strict=True):
        if p["finish_reason"] == "length":
            assert v.reason == "rephrase.truncated"
        else:
            assert v.reason is None and v.text
    # The 135M model loops: every output cut at the limit repeats itself, the finished ones do not.
    looped = [repetition(p["output"]) for p in pairs if p["finish_reason"] == "length"]
    finished = [repetition(p["output"]) for p in pairs if p["finish_reason"] == "stop"]
    assert min(looped) > 0.5 > max(finished)
    assert sum(v.reason is None for v in verdicts) == 3  # of 8: honest about a 135M rephraser
