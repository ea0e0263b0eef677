"""Builds a PreSelect model family (``curate preselect-family build RECIPE --out DIR``).

Small-scale PreSelect (``../shared/methods.md`` §3, "Small scale"): where no family of
hub models with known benchmark scores can run, train small LMs here on different public
corpora and amounts of data, and take as each model's "benchmark score" its held-out loss
on a declared target set (minus bits per character: higher is better). Models that may
come from elsewhere (a bundled LM, a GGUF) join with the same measured score.

The output folder is a versioned artifact a later job names in ``family:``:
``family.json`` (the recipe, every training source and the target set with their SHA256,
each model's training facts, target BPC and files' SHA256, and a ``version`` hashing
all of it) and one folder per trained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from filters.lm.family import FAMILY_FILE, FamilyMember, bpc_matrix, check_members, member_scorer
from filters.text_files import read_texts
from workers.atomic import sha256_file


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    path: str
    text_field: str = "text"
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Target(Source):
    every: int = Field(1, ge=1, description="take every k-th document (the rest stays held out for evaluation)")
    offset: int = Field(0, ge=0)


class RecipeMember(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    # A trained member: its corpus and token budget. An external one: backend + model.
    sources: list[Source] = Field(default_factory=list)
    tokens: int | None = Field(None, ge=1000)
    backend: Literal["small_lm", "transformers", "llama_cpp", "kenlm"] = "small_lm"
    model: str | None = None


class Recipe(_Model):
    name: str
    seed: int = 0
    target: Target
    window: int = Field(255, ge=8)
    max_chars: int = Field(2000, ge=100, description="characters of each document the family scores")
    model: dict[str, int | float] = Field(default_factory=dict, description="SmallLMConfig fields")
    members: list[RecipeMember] = Field(min_length=2)


def _target_texts(target: Target) -> list[str]:
    texts = read_texts(target.path, target.text_field, target.where)
    return texts[target.offset::target.every]


def _corpus(member: RecipeMember, seed: int) -> list[str]:
    texts = [t for s in member.sources for t in read_texts(s.path, s.text_field, s.where)]
    random.Random(f"{seed}:{member.name}").shuffle(texts)
    return texts


def target_bpc(member: FamilyMember, texts: list[str], window: int) -> float:
    """Bits per character over the whole target set (every document scored entirely)."""
    scorer = member_scorer(member, window, None)
    bpc = bpc_matrix([scorer], texts, max_chars=max(len(t) for t in texts))[:, 0]
    chars = np.array([len(t) for t in texts], dtype=np.float64)
    ok = np.isfinite(bpc)
    return float((bpc[ok] * chars[ok]).sum() / chars[ok].sum())


def build_family(recipe: Recipe, out: Path, recipe_text: str, say: Callable[[str], None] = print) -> dict:
    from filters.lm.bpe import end_of_text_id, load_tokenizer
    from filters.lm.small_lm import SmallLMConfig, token_stream, train_small_lm
    from filters.lm.small_lm_backend import save_small_lm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        target = _target_texts(recipe.target)
        tok = load_tokenizer()
        config = SmallLMConfig(vocab_size=tok.get_vocab_size(), **recipe.model)  # type: ignore[arg-type]
        entries = []
        for m in recipe.members:
            started = time.perf_counter()
            if m.sources:
                if m.tokens is None:
                    raise ValueError(f"member {m.name}: a trained member needs tokens")
                docs = (tok.encode(t).ids for t in _corpus(m, recipe.seed))
                trained = train_small_lm(token_stream(docs, m.tokens, end_of_text_id(tok)), config, recipe.seed)
                save_small_lm(trained, tmp / m.name)
                member = FamilyMember(name=m.name, backend="small_lm", model=str(tmp / m.name), benchmark_score=0)
                training = {"sources": [{**s.model_dump(), "sha256": sha256_file(Path(s.path))} for s in m.sources],
                            "tokens": m.tokens, "train_seconds": round(trained.seconds, 1),
                            "final_loss_nats": round(float(np.mean(trained.losses[-20:])), 4)}
                model_ref = m.name
            else:
                if m.model is None:
                    raise ValueError(f"member {m.name}: give sources + tokens (train it) or backend + model")
                member = FamilyMember(name=m.name, backend=m.backend, model=m.model, benchmark_score=0)
                training, model_ref = None, m.model
            bpc = target_bpc(member, target, recipe.window)
            files = {}
            if m.sources:
                files = {p.name: sha256_file(p) for p in sorted((tmp / m.name).iterdir())}
            entries.append({"name": m.name, "backend": member.backend, "model": model_ref,
                            "benchmark_score": round(-bpc, 6), "target_bpc": round(bpc, 6),
                            "training": training, "files": files})
            say(f"{m.name}: target {bpc:.4f} bits/char ({time.perf_counter() - started:.0f} s)")
        check_members([FamilyMember(**{k: e[k] for k in ("name", "backend", "model", "benchmark_score")})
                       for e in entries], recipe.name)
        family = {
            "name": recipe.name,
            "benchmark": "minus bits per character on the target set (higher is better)",
            "target": {**recipe.target.model_dump(), "sha256": sha256_file(Path(recipe.target.path)),
                       "docs": len(target), "chars": sum(len(t) for t in target)},
            "scoring": {"window": recipe.window, "max_chars": recipe.max_chars},
            "model_config": config.as_dict(),
            "tokenizer": "bundled ablation BPE (filters/lm/data/ablation-bpe-4k.json)",
            "recipe": recipe_text, "models": entries,
        }
        family["version"] = hashlib.sha256(json.dumps(family, sort_keys=True).encode()).hexdigest()[:16]
        (tmp / FAMILY_FILE).write_text(json.dumps(family, indent=1) + "\n")
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp's 0700 would hide the family from other users
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
        return family
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
