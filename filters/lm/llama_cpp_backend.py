"""llama.cpp (llama-cpp-python) over a GGUF file.

The model evaluates each window once with ``logits_all`` so every position's logits
are kept; log-probabilities come from a float32 log-softmax in numpy.
"""

from __future__ import annotations

import numpy as np

from filters.lm.base import WindowedScorer, require


def log_softmax_pick(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``log softmax(logits)[i, targets[i]]`` for each row, without materialising the full result."""
    peak = logits.max(axis=1)
    lse = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    return logits[np.arange(len(targets)), targets] - lse


class LlamaCppScorer(WindowedScorer):
    def __init__(self, model_path: str, *, window: int, mode: str, stride: int, max_windows: int | None,
                 n_threads: int | None) -> None:
        llama_cpp = require("llama_cpp", "llama-cpp-python", "llama_cpp perplexity", "llama")
        self._set_windows(window, mode, stride, max_windows)
        n_ctx = window + 1
        self.llm = llama_cpp.Llama(
            model_path=model_path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
            n_threads=n_threads, n_threads_batch=n_threads, verbose=False,
        )
        arch = self.llm.metadata.get("general.architecture", "llama")
        trained = int(self.llm.metadata.get(f"{arch}.context_length", n_ctx))
        if n_ctx > trained:
            raise ValueError(f"window {window} exceeds the context {trained} {model_path} was trained on")
        bos = self.llm.token_bos()
        # Every token is predicted from at least BOS; models without one use EOS as the separator.
        self.bos = bos if bos >= 0 else self.llm.token_eos()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        out = []
        for seq in seqs:
            self.llm.reset()
            self.llm.eval(seq)
            logits = np.asarray(self.llm.scores[: len(seq) - 1], dtype=np.float32)
            out.append(log_softmax_pick(logits, np.asarray(seq[1:])))
        return out

    def _byte_len(self, ids: list[int]) -> int:
        return len(self.llm.detokenize(ids))
