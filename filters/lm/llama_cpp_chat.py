"""Chat generation with llama.cpp (llama-cpp-python) over a GGUF file: the in-process
``llama_cpp`` backend of ``rephrase_v1`` (one model per Ray actor).

The chat template is the GGUF's own (``create_chat_completion`` applies it); nothing here
builds prompt strings by hand. The model's identity for caches and lineage is its file
name plus the SHA256 of the file.
"""

from __future__ import annotations

from filters.lm.base import require
from filters.lm.chat import Generation
from filters.lm.models import SMOLLM2, file_sha256, resolve_model


class LlamaCppChat:
    def __init__(self, model: str = SMOLLM2, *, n_ctx: int = 2048, n_threads: int | None = None,
                 vocab_only: bool = False) -> None:
        llama_cpp = require("llama_cpp", "llama-cpp-python", "llama_cpp rephrasing", "llama")
        path = resolve_model(model)
        self.model_id = f"{path.name}:{file_sha256(path)[:16]}"
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, vocab_only=vocab_only, verbose=False)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
             seed: int) -> Generation:
        out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=temperature,
                                              top_p=top_p, seed=seed)
        choice, usage = out["choices"][0], out["usage"]
        return Generation(text=choice["message"]["content"] or "", finish_reason=choice["finish_reason"],
                          prompt_tokens=int(usage["prompt_tokens"]), completion_tokens=int(usage["completion_tokens"]),
                          model_id=self.model_id)
