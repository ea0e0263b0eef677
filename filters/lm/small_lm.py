"""A small causal transformer and its trainer: the yardstick of ``curate ablate`` and a
building block for stages that need LMs trained on different corpora (PreSelect's model
family). Documents in, a trained model and its held-out bits per byte out.

Everything an arm's result depends on is explicit: the token stream (exactly N tokens),
the config and the seed. On CPU a seed reproduces the same losses (deterministic
algorithms, one thread count); ``device="cuda"`` runs the same code on a GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

IGNORE = -100  # target id the loss skips (padding of the stream's last row)


@dataclass(frozen=True)
class SmallLMConfig:
    """The model and its optimisation; identical for every arm of an ablation."""

    vocab_size: int = 4096
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    context: int = 256
    batch_size: int = 4  # rows of ``context`` tokens per step: many small steps suit a budget of ~1M tokens
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batch_size: int = 32

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedLM:
    model: Any  # torch.nn.Module
    config: SmallLMConfig
    seed: int
    tokens: int  # tokens in the training stream (every one is seen once)
    steps: int
    seconds: float
    device: str
    losses: list[float] = field(default_factory=list)  # training loss per step, nats per token

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def token_stream(docs: Iterable[Sequence[int]], n_tokens: int, end_of_text: int) -> np.ndarray:
    """Exactly ``n_tokens`` tokens: each document preceded by ``end_of_text``, in the order
    given, the last one cut where the budget ends. Raises ValueError when the documents
    hold fewer tokens."""
    out = np.empty(n_tokens, dtype=np.int64)
    filled = 0
    for doc in docs:
        if filled >= n_tokens:
            break
        piece = [end_of_text, *doc][: n_tokens - filled]
        out[filled:filled + len(piece)] = piece
        filled += len(piece)
    if filled < n_tokens:
        raise ValueError(f"the documents hold {filled} tokens (separators included), fewer than the {n_tokens} asked")
    return out


def _rows(stream: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets: consecutive windows of ``context`` tokens, each target the next
    token of the stream, so all N tokens take part; the last row is padded (masked)."""
    n = len(stream)
    n_rows = max(1, math.ceil((n - 1) / context))
    x = np.zeros((n_rows, context), dtype=np.int64)
    y = np.full((n_rows, context), IGNORE, dtype=np.int64)
    for r in range(n_rows):
        chunk = stream[r * context: r * context + context + 1]
        x[r, : len(chunk) - 1] = chunk[:-1]
        y[r, : len(chunk) - 1] = chunk[1:]
    return x, y


def _build_model(config: SmallLMConfig) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = config.d_model
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, t, d = h.shape
            q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, config.n_head, d // config.n_head).transpose(1, 3).unbind(2)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(att.transpose(1, 2).reshape(b, t, d))
            return h + self.mlp(self.ln2(h))

    class SmallLM(nn.Module):
        """GPT-style: pre-LayerNorm blocks, learned positions, output tied to the embedding."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
            self.pos = nn.Embedding(config.context, config.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.apply(self._init)

        @staticmethod
        def _init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))
            for block in self.blocks:
                h = block(h)
            return self.ln_f(h) @ self.embed.weight.T

    if config.d_model % config.n_head:
        raise ValueError(f"d_model {config.d_model} is not a multiple of n_head {config.n_head}")
    return SmallLM()


def _seeded(seed: int, device: str) -> Any:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    return torch.Generator().manual_seed(seed)


def train_small_lm(stream: np.ndarray, config: SmallLMConfig, seed: int, device: str = "cpu",
                   on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> TrainedLM:
    """One epoch over ``stream`` (token ids), rows in a seeded order, AdamW with warm-up
    and cosine decay. ``on_batch(inputs, targets)`` sees every training batch (tests use
    it to prove what the model was trained on)."""
    import torch
    from torch.nn import functional as F

    if stream.size and (stream.min() < 0 or stream.max() >= config.vocab_size):
        raise ValueError(f"token ids must lie in [0, {config.vocab_size}); the tokenizer and config disagree")
    generator = _seeded(seed, device)
    model = _build_model(config).to(device)
    x_all, y_all = _rows(stream, config.context)
    order = torch.randperm(len(x_all), generator=generator).numpy()
    steps = math.ceil(len(order) / config.batch_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(config, step, steps)
        idx = order[step * config.batch_size:(step + 1) * config.batch_size]
        xb, yb = x_all[idx], y_all[idx]
        if on_batch is not None:
            on_batch(xb, yb)
        logits = model(torch.from_numpy(xb).to(device))
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), torch.from_numpy(yb).to(device).reshape(-1),
                               ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.item()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return TrainedLM(model, config, seed, len(stream), steps, time.perf_counter() - started, device, losses)


def _lr(config: SmallLMConfig, step: int, steps: int) -> float:
    warmup = min(config.warmup_steps, max(1, steps // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def eval_bits(trained: TrainedLM, docs: Sequence[Sequence[int]], end_of_text: int) -> float:
    """Total bits (-log2 p) the model assigns to every token of ``docs``, each document
    scored on its own from an ``end_of_text`` start, in windows of the model's context
    that do not overlap (a window after the first has no earlier context)."""
    import torch
    from torch.nn import functional as F

    config, model = trained.config, trained.model
    rows_x, rows_y = [], []
    for doc in docs:
        x, y = _rows(np.asarray([end_of_text, *doc], dtype=np.int64), config.context)
        if len(doc):
            rows_x.append(x)
            rows_y.append(y)
    if not rows_x:
        return 0.0
    x_all, y_all = np.concatenate(rows_x), np.concatenate(rows_y)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x_all), config.eval_batch_size):
            xb = torch.from_numpy(x_all[i:i + config.eval_batch_size]).to(trained.device)
            yb = torch.from_numpy(y_all[i:i + config.eval_batch_size]).to(trained.device)
            logits = model(xb)
            nll = F.cross_entropy(logits.reshape(-1, config.vocab_size).double(), yb.reshape(-1),
                                  ignore_index=IGNORE, reduction="sum")
            total += float(nll.item())
    return total / math.log(2)


def bits_per_byte(trained: TrainedLM, eval_texts: Sequence[str], tokenizer: Any, end_of_text: int) -> float:
    """Held-out loss in bits per UTF-8 byte of ``eval_texts`` (comparable across tokenizers)."""
    docs = [e.ids for e in tokenizer.encode_batch(list(eval_texts))]
    n_bytes = sum(len(t.encode("utf-8")) for t in eval_texts)
    if n_bytes == 0:
        raise ValueError("the eval set has no text")
    return eval_bits(trained, docs, end_of_text) / n_bytes


def train_on_documents(train_texts: Iterable[str], eval_texts: Sequence[str], n_tokens: int,
                       config: SmallLMConfig | None = None, seed: int = 0, tokenizer: Any = None,
                       device: str = "cpu") -> tuple[TrainedLM, float]:
    """Documents in, a model and its held-out bits per byte out: ``train_texts`` (in the
    order given) become a stream of exactly ``n_tokens`` tokens of the bundled ablation
    BPE (or ``tokenizer``), the model trains on it once, and ``eval_texts`` score it."""
    from filters.lm.bpe import end_of_text_id, load_tokenizer

    tok = tokenizer or load_tokenizer()
    eot = end_of_text_id(tok)
    config = config or SmallLMConfig(vocab_size=tok.get_vocab_size())
    docs = (tok.encode(t).ids for t in train_texts)
    trained = train_small_lm(token_stream(docs, n_tokens, eot), config, seed, device)
    return trained, bits_per_byte(trained, eval_texts, tok, eot)
