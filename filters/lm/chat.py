"""What a chat generator returns, and the interface both ``rephrase_v1`` backends share
(in-process llama.cpp: ``llama_cpp_chat``; OpenAI-compatible servers: ``openai_chat``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None  # "stop", or "length" when max_tokens cut it
    prompt_tokens: int
    completion_tokens: int
    model_id: str


class ChatError(RuntimeError):
    """A generation request failed for good (after any retries); the message names the URL
    and the server's answer, never the API key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChatGenerator(Protocol):
    model_id: str  # what caches and lineage name the model by (file hash or server model id)

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
             seed: int) -> Generation: ...
