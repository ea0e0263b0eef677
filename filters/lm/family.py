"""A PreSelect model family: N ≥ 2 language models, each with a benchmark score, and the
rule that turns them into a bits-per-character matrix over documents.

A family is given inline in a spec (``[{name, backend, model, benchmark_score}]``), as a
folder holding ``family.json`` (what ``curate preselect-family build`` writes: models,
their training data, the target set and the scores, all hashed), or by the name of the
family bundled with curate (``preselect-family-v1``, see ``data/preselect-family-v1/``).

The window rule is the same for every model: a document's first ``max_chars``
characters are scored, every token of them predicted once (strided windows of
``window`` tokens, half a window of context after the first), each document on its own.
BPC = NLL / (ln 2 · characters scored), so models with different tokenizers compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from filters.base import OptionalInputPath, PathRef
from filters.lm.base import Scorer
from filters.lm.models import BUNDLED, model_file_list, resolve_model
from filters.preselect_method import bits_per_char

BUNDLED_FAMILY = "preselect-family-v1"
FAMILY_FILE = "family.json"
_DATA = Path(__file__).parent / "data"

MemberModel = Annotated[str, Field(min_length=1), PathRef(names=BUNDLED)]


class FamilyMember(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    backend: Literal["small_lm", "transformers", "llama_cpp", "kenlm"]
    model: MemberModel = Field(description="a bundled model name, or a path (a small LM's folder, a .gguf, an HF "
                               "folder, a KenLM model)")
    benchmark_score: float = Field(description="higher is better: the model's score on the benchmark the family "
                                   "predicts")
    sp_model: OptionalInputPath = Field(None, description="kenlm: its SentencePiece model")


class FamilyError(ValueError):
    """A family that cannot be used (missing file, fewer than two models, equal scores)."""


def check_members(members: list[FamilyMember], where: str) -> list[FamilyMember]:
    if len(members) < 2:
        raise FamilyError(f"{where}: a family needs at least two models, got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise FamilyError(f"{where}: model names must be unique, got {names}")
    if len({m.benchmark_score for m in members}) < 2:
        raise FamilyError(f"{where}: every benchmark score is equal, so no pair of models is ordered")
    return members


def family_folder(ref: str) -> Path:
    return _DATA / BUNDLED_FAMILY if ref == BUNDLED_FAMILY else Path(ref)


def read_family(ref: str) -> tuple[list[FamilyMember], dict]:
    """Members (model paths made absolute) and the whole ``family.json`` of a family folder
    or of the bundled family."""
    folder = family_folder(ref)
    path = folder / FAMILY_FILE
    try:
        meta = json.loads(path.read_text())
        raw = meta["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FamilyError(f"{path} is not a PreSelect family file: {exc}") from None
    members = []
    for i, entry in enumerate(raw):
        fields = {k: entry[k] for k in ("name", "backend", "model", "benchmark_score", "sp_model") if k in entry}
        try:
            member = FamilyMember.model_validate(fields)
        except ValidationError as exc:
            raise FamilyError(f"{path}: models[{i}]: {exc}") from None
        if member.model not in BUNDLED and not Path(member.model).is_absolute():
            member = member.model_copy(update={"model": str(folder / member.model)})
        members.append(member)
    return check_members(members, str(path)), meta


def member_files(member: FamilyMember) -> list[str]:
    """The files a member loads (hashed into job.json)."""
    return model_file_list(member.model) + ([member.sp_model] if member.sp_model else [])


def member_scorer(member: FamilyMember, window: int, n_threads: int | None) -> Scorer:
    path = str(resolve_model(member.model))
    stride = max(1, window // 2)
    if member.backend == "small_lm":
        from filters.lm.small_lm_backend import SmallLMScorer

        return SmallLMScorer(path, window=window, mode="strided", stride=stride, max_windows=None,
                             n_threads=n_threads)
    if member.backend == "transformers":
        from filters.lm.hf_backend import TransformersScorer

        return TransformersScorer(path, window=window, mode="strided", stride=stride, max_windows=None,
                                  n_threads=n_threads, batch_tokens=2048)
    if member.backend == "llama_cpp":
        from filters.lm.llama_cpp_backend import LlamaCppScorer

        return LlamaCppScorer(path, window=window, mode="strided", stride=stride, max_windows=None,
                              n_threads=n_threads)
    from filters.lm.ccnet import KenLMScorer

    return KenLMScorer(path, member.sp_model, "space")


def calibration_text(text: str | None, max_chars: int) -> str:
    """The part of a document every model scores."""
    return (text or "")[:max_chars]


def bpc_matrix(scorers: list[Scorer], texts: list[str], max_chars: int) -> np.ndarray:
    """Bits per character, documents × models; NaN for a text with nothing to score."""
    cut = [calibration_text(t, max_chars) for t in texts]
    out = np.full((len(cut), len(scorers)), np.nan)
    for j, scorer in enumerate(scorers):
        for i, (text, result) in enumerate(zip(cut, scorer.score(cut), strict=True)):
            if result is not None and text:
                if result.tokens < result.doc_tokens:  # the rule scores every token; a backend that did not is a bug
                    raise RuntimeError(f"family model {j} scored {result.tokens} of {result.doc_tokens} tokens")
                out[i, j] = bits_per_char(result.nll_nats, len(text))
    return out
