"""Hugging Face ``transformers`` causal LMs: a checkpoint folder, or a GGUF file that
transformers de-quantises to float32 (needs ``gguf``). Runs on a GPU when one is visible
(``device="auto"``), else on the CPU with ``n_threads`` threads.

De-quantising a GGUF takes ~15 s per load, paid by every actor; the first load saves
the float32 weights as safetensors in the model cache (keyed by the GGUF's SHA256),
and later loads read those in under a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from filters.lm.base import WindowedScorer, require
from filters.lm.models import file_sha256, model_cache_dir


def dequantised_folder(gguf: Path, transformers) -> Path:
    """A transformers folder holding ``gguf`` de-quantised, built once and published atomically."""
    target = model_cache_dir() / f"{gguf.stem}-{file_sha256(gguf)[:16]}-hf"
    if target.is_dir():
        return target
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain float32 now
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        type(model.config).from_dict(config).save_pretrained(tmp)
        from safetensors.torch import save_model  # save_pretrained refuses GGUF-loaded models

        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another actor published it first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class TransformersScorer(WindowedScorer):
    def __init__(self, model_path: str, *, window: int, mode: str, stride: int, max_windows: int | None,
                 n_threads: int | None, batch_tokens: int, device: str = "auto", dtype: str = "float32") -> None:
        torch = require("torch", "torch", "transformers perplexity", "lm")
        transformers = require("transformers", "transformers", "transformers perplexity", "lm")
        self.torch = torch
        transformers.utils.logging.disable_progress_bar()
        path = Path(model_path)
        if path.suffix == ".gguf":
            require("gguf", "gguf", "transformers perplexity", "lm")
            path = dequantised_folder(path, transformers)
        if n_threads:
            torch.set_num_threads(n_threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=getattr(torch, dtype)
        ).to(self.device).eval()
        trained = getattr(self.model.config, "max_position_embeddings", None)
        if trained and window + 1 > trained:
            raise ValueError(f"window {window} exceeds the context {trained} {model_path} was trained on")
        tok = self.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.bos
        self._set_windows(window, mode, stride, max_windows)
        self.batch_tokens = batch_tokens

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        torch = self.torch
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch
        start = 0
        while start < len(order):
            width = len(seqs[order[start]])
            size = max(1, self.batch_tokens // width)
            batch = order[start:start + size]
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logits = logits[:, :-1].float()
                # gather − logsumexp: the same as log_softmax then gather, without a second vocab-sized tensor
                target = logits.gather(-1, ids[:, 1:].to(self.device).unsqueeze(-1)).squeeze(-1)
                picked = (target - torch.logsumexp(logits, dim=-1)).cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = picked[row, : len(seqs[i]) - 1]
            start += size
        return out  # type: ignore[return-value]

    def _byte_len(self, ids: list[int]) -> int:
        return len(self.tokenizer.decode(ids).encode("utf-8"))
