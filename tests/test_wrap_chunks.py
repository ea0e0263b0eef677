"""WRAP's chunking and prompts (groundwork of rephrase_v1): whole sentences, the limit, the
reassembly, and the paper's prompt text byte for byte."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from filters.wrap_chunks import STYLE_PROMPTS, SYSTEM, pack_chunks, sentence_spans
from workers.demo_corpus import _stdlib_docstrings

METHODS = Path(__file__).resolve().parents[2] / "shared" / "methods.md"


def words(text: str) -> int:
    return len(text.split())


def test_the_splitter_keeps_abbreviations_decimals_and_quotes_inside_sentences():
    text = 'Dr. Smith paid $3.50 for it on Jan. 5. "Is it done?" she asked. The U.S. team won 2.5 to 1.'
    got = [text[a:b] for a, b in sentence_spans(text)]
    assert got[0] == "Dr. Smith paid $3.50 for it on Jan. 5."
    assert got[-1] == "The U.S. team won 2.5 to 1."
    assert any(s.startswith('"Is it done?"') for s in got)


def test_chunks_stay_under_the_limit_and_reassemble_every_sentence_in_order():
    texts = [d["text"] for d in itertools.islice(_stdlib_docstrings(), 400) if len(d["text"]) > 1500][:20]
    assert texts
    for text in texts:
        chunks = pack_chunks(text, words, max_tokens=60)
        sentences = [text[a:b] for a, b in sentence_spans(text)]
        inside = [text[a:b] for c in chunks for a, b in sentence_spans(text) if c.start <= a and b <= c.end]
        assert inside == sentences  # every sentence in exactly one chunk, in order, unchanged
        assert all(c.text == text[c.start:c.end] and c.tokens == words(c.text) for c in chunks)
        assert all(c.tokens <= 60 or (c.oversize and c.sentences == 1) for c in chunks)
        ends = [c.end for c in chunks]
        assert ends == sorted(ends) and chunks[-1].end == sentence_spans(text)[-1][1]


def test_a_sentence_longer_than_the_limit_is_its_own_chunk_never_split():
    long = " ".join(["word"] * 50) + "."
    chunks = pack_chunks(f"Short one. {long} Another short one.", words, max_tokens=10)
    assert [c.sentences for c in chunks] == [1, 1, 1]
    assert chunks[1].oversize and chunks[1].text == long


def test_prompts_are_the_papers_byte_for_byte():
    if not METHODS.exists():
        pytest.skip(f"{METHODS} is absent (the shared methods notes)")
    notes = METHODS.read_text()
    system = re.search(r'preceded by the system text \*"(.+?)"\*', notes).group(1)
    assert system == SYSTEM
    for style, label in (("easy", "Easy"), ("medium", "Medium (Wikipedia)"), ("hard", "Hard"), ("qa", "QA")):
        quoted = re.search(rf"\*\*{re.escape(label)}:\*\* \"(.+)\"\n", notes).group(1)
        assert STYLE_PROMPTS[style] == quoted, style


def test_a_real_chat_generation_through_the_ggufs_own_template():
    pytest.importorskip("llama_cpp")
    from filters.lm.llama_cpp_chat import LlamaCppChat
    from filters.wrap_chunks import wrap_messages

    chat = LlamaCppChat(n_ctx=512, n_threads=2)
    text = "The river runs past the old mill. A stone bridge crosses it near the church."
    messages = wrap_messages(STYLE_PROMPTS["medium"], text)
    assert messages[0]["content"].endswith("answers to the questions.") and messages[1]["content"].endswith(text)
    first = chat.chat(messages, max_tokens=24, temperature=0.0, top_p=1.0, seed=0)
    again = chat.chat(messages, max_tokens=24, temperature=0.0, top_p=1.0, seed=0)
    assert first == again and first.text  # greedy decoding: the same text and counts twice
    assert first.finish_reason in ("stop", "length") and 0 < first.completion_tokens <= 24
    assert first.prompt_tokens > chat.count_tokens(text)  # the template and system text come on top
    assert first.model_id.startswith("SmolLM2-135M-Instruct.Q4_1.gguf:") and len(first.model_id.split(":")[1]) == 16
