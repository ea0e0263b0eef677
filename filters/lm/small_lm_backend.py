"""Small LMs trained here (``filters.lm.small_lm``) saved as a folder and scored through the
same windowed driver as the other neural backends, so a PreSelect family can mix them
with transformers, llama.cpp or KenLM models.

A folder holds ``config.json`` (the ``SmallLMConfig``, the tokenizer and its SHA256) and
``model.safetensors`` (float16 weights: half the size, and the BPC differences a family
relies on are orders of magnitude above float16 rounding; scoring runs in float32).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from filters.lm.base import WindowedScorer, require

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def _tokenizer_ref(path: str | None) -> tuple[str | None, str]:
    from filters.lm.bpe import BUNDLED

    file = Path(path) if path else BUNDLED
    return path, hashlib.sha256(file.read_bytes()).hexdigest()


def save_small_lm(trained: Any, folder: Path, tokenizer: str | None = None, extra: dict | None = None) -> Path:
    """Write ``trained`` (a ``TrainedLM``) to ``folder`` atomically (a temporary folder, then
    a rename). ``tokenizer``: its JSON path, None for the bundled ablation BPE."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu").half().contiguous() for k, v in trained.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        path, sha = _tokenizer_ref(tokenizer)
        (tmp / CONFIG).write_text(json.dumps({"config": trained.config.as_dict(), "tokenizer": path,
                                              "tokenizer_sha256": sha, **(extra or {})}, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_small_lm(folder: str | Path) -> tuple[Any, Any, dict]:
    """(model in eval mode, tokenizer, config.json) of a saved small LM."""
    require("torch", "torch", "small_lm perplexity", "lm")
    from safetensors.torch import load_file

    from filters.lm.bpe import load_tokenizer
    from filters.lm.small_lm import SmallLMConfig, _build_model

    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
        config = SmallLMConfig(**meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder} is not a saved small LM (needs {CONFIG} and {WEIGHTS}): {exc}") from None
    tok_path, sha = _tokenizer_ref(meta.get("tokenizer"))
    if sha != meta.get("tokenizer_sha256"):
        raise ValueError(f"{folder}: its tokenizer {tok_path or 'bundled ablation BPE'} has changed since the model "
                         "was trained (SHA256 differs)")
    model = _build_model(config)
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()})
    model.eval()
    return model, load_tokenizer(tok_path), meta


class SmallLMScorer(WindowedScorer):
    """Scores texts with a saved small LM: windows of at most the model's context, each
    document from an end-of-text start, every token predicted once."""

    def __init__(self, folder: str, *, window: int, mode: str, stride: int, max_windows: int | None,
                 n_threads: int | None = None, batch_size: int = 32) -> None:
        from filters.lm.bpe import end_of_text_id

        self.torch = require("torch", "torch", "small_lm perplexity", "lm")
        if n_threads:
            self.torch.set_num_threads(n_threads)
        self.model, self.tokenizer, meta = load_small_lm(folder)
        context = meta["config"]["context"]
        if window + 1 > context:
            raise ValueError(f"window {window} needs a context of {window + 1} tokens; {folder} has {context}")
        self.bos = end_of_text_id(self.tokenizer)
        self.batch_size = batch_size
        self._set_windows(window, mode, stride, max_windows)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        torch = self.torch
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(seqs[batch[0]])
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            with torch.inference_mode():
                # Causal attention: padding after a sequence never changes its own positions.
                logits = self.model(ids)[:, :-1].float()
                target = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                picked = (target - torch.logsumexp(logits, dim=-1)).numpy()
            for row, i in enumerate(batch):
                out[i] = picked[row, : len(seqs[i]) - 1]
        return out  # type: ignore[return-value]

    def _byte_len(self, ids: list[int]) -> int:
        return len(self.tokenizer.decode(ids).encode("utf-8"))
