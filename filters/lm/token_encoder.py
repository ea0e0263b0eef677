"""The tokenizer a tokenized export encodes with, from what a user names: a bundled model
(its GGUF's tokenizer, the one the model was trained with), a GGUF file, a ``tokenizer.json``,
a Hugging Face tokenizer folder, or ``ablation-bpe`` (the ablations' own BPE). Encoding
runs on the Rust ``tokenizers`` library, which batch-encodes on all cores.

Documents are separated by an end-of-text token. A pretraining separator found in the
vocabulary (``<|endoftext|>``, ``</s>``, ``<eos>``, ...) wins over the tokenizer's declared
end-of-sequence token, because an instruct model's GGUF declares its chat turn end
(SmolLM2-Instruct: ``<|im_end|>``), which is not a document boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filters.lm import bpe
from filters.lm.base import require
from filters.lm.models import BUNDLED, file_sha256, model_cache_dir, resolve_model

ABLATION_BPE = "ablation-bpe"
DOCUMENT_ENDS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|end|>")


@dataclass
class Encoder:
    tokenizer: Any  # tokenizers.Tokenizer
    name: str  # as the user named it
    sha256: str  # of the tokenizer's JSON serialisation: what was really used
    vocab_size: int
    eos_token: str
    eos_id: int

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, no special tokens added, then the end-of-text token."""
        eos = [self.eos_id]
        return [e.ids + eos for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "eos_token": self.eos_token, "eos_id": self.eos_id}


def load_encoder(ref: str, eos_token: str | None = None) -> Encoder:
    tokenizers = require("tokenizers", "tokenizers", "tokenized export", "lm")
    declared = None
    if ref == ABLATION_BPE:
        tok = tokenizers.Tokenizer.from_file(str(bpe.BUNDLED))
    elif ref in BUNDLED or ref.endswith(".gguf"):
        tok, declared = _from_gguf(resolve_model(ref), tokenizers)
    else:
        path = Path(ref).expanduser()
        if path.is_dir():
            config = path / "tokenizer_config.json"
            if config.exists():
                declared = _token_text(json.loads(config.read_text()).get("eos_token"))
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer not found: {ref} (a tokenizer.json, a tokenizer folder, a GGUF, "
                                    f"{ABLATION_BPE}, or a bundled model: {', '.join(BUNDLED)})")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"cannot load tokenizer {path}: {exc}") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    if eos_token is not None and eos_token not in vocab:
        raise ValueError(f"--eos-token {eos_token!r} is not in the vocabulary of {ref}")
    chosen = eos_token or next((t for t in DOCUMENT_ENDS if t in vocab), None) or declared
    if chosen is None or chosen not in vocab:
        raise ValueError(f"{ref}: no end-of-text token found (tried {', '.join(DOCUMENT_ENDS)}); name one "
                         "with --eos-token")
    digest = hashlib.sha256(tok.to_str().encode()).hexdigest()
    return Encoder(tok, ref, digest, tok.get_vocab_size(with_added_tokens=True), chosen, vocab[chosen])


def _token_text(value: Any) -> str | None:
    """``eos_token`` in a tokenizer_config.json: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _from_gguf(gguf: Path, tokenizers: Any) -> tuple[Any, str | None]:
    """A GGUF's tokenizer as transformers converts it (seconds), cached by the GGUF's sha256."""
    target = model_cache_dir() / f"{gguf.stem}-{file_sha256(gguf)[:16]}-tokenizer.json"
    meta = target.with_suffix(".eos")
    if not target.exists():
        transformers = require("transformers", "transformers", "a GGUF's tokenizer", "lm")
        require("gguf", "gguf", "a GGUF's tokenizer", "lm")
        hf = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
        os.close(fd)
        hf.backend_tokenizer.save(tmp)
        Path(tmp + ".eos").write_text(hf.eos_token or "")
        os.replace(tmp + ".eos", meta)
        os.replace(tmp, target)
    return tokenizers.Tokenizer.from_file(str(target)), (meta.read_text() if meta.exists() else "") or None
