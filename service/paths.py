"""Confine every path a job spec names to the service's roots.

Inputs, the output and every file a stage reads (each params field typed ``InputPath``,
e.g. a model) go through one rule. Refused with a 400 ``path_not_allowed``: remote URLs,
``..`` components, control characters (a NUL byte among them), absolute paths outside the
roots and symlinks that resolve outside them. The message for a path outside the roots
is the same whether or not the file exists, so a client learns nothing about files it
may not read. Only inside the roots does a missing stage file get its own 422.
"""

from __future__ import annotations

import glob
from pathlib import Path

from filters.base import PathRef
from service.errors import ServiceError
from workers.spec import JobSpec, resolve_paths, unsafe_path

_GLOB = "*?["


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _refuse(field: str, message: str, roots: list[Path] | None = None) -> ServiceError:
    return ServiceError(400, f"{field}: {message}", code="path_not_allowed",
                        details={"roots": [str(r) for r in roots]} if roots else None)


def _check_syntax(field: str, value: str) -> None:
    if "://" in value:
        raise _refuse(field, f"remote URLs are not accepted by this service ({value!r})")
    reason = unsafe_path(value)
    if reason:
        raise _refuse(field, f"{reason} is not allowed ({value!r})")
    if ".." in Path(value).parts:
        raise _refuse(field, f"'..' is not allowed in paths ({value!r})")


def _fixed_len(path: Path) -> int:
    for i, part in enumerate(path.parts):
        if any(c in part for c in _GLOB):
            return i
    return len(path.parts)


def confine_input(field: str, value: str, roots: list[Path]) -> str:
    _check_syntax(field, value)
    path = Path(value) if Path(value).is_absolute() else roots[0] / value
    # The fixed part of a glob must resolve inside a root, and so must every match.
    fixed = Path(*path.parts[: _fixed_len(path)])
    if not _inside(fixed.resolve(), roots):
        raise _refuse(field, f"{value!r} is outside the allowed input roots", roots)
    for match in glob.glob(str(path)):
        if not _inside(Path(match).resolve(), roots):
            raise _refuse(field, f"{value!r} is outside the allowed input roots", roots)
    return str(path)


def confine_file(field: str, value: str, roots: list[Path]) -> str:
    """A file a stage reads: no globs, resolved (symlinks followed) inside a root; then it
    must exist (422 otherwise: inside the roots, existence is no secret)."""
    _check_syntax(field, value)
    path = Path(value) if Path(value).is_absolute() else roots[0] / value
    resolved = path.resolve()
    if not _inside(resolved, roots):
        raise _refuse(field, f"{value!r} is outside the allowed roots", roots)
    if not resolved.exists():
        raise ServiceError(422, f"{field}: file not found: {value}", code="invalid_request")
    return str(resolved)


def confine_output(value: str, root: Path) -> str:
    _check_syntax("output", value)
    path = Path(value) if Path(value).is_absolute() else root / value
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not _inside(path.absolute(), [root]) or not _inside(existing.resolve(), [root]):
        raise _refuse("output", f"{value!r} is outside the output root {root}")
    return str(path)


def confine_spec(spec: JobSpec, data_roots: list[Path], output_root: Path, file_roots: list[Path]) -> JobSpec:
    """The spec with every path confined and made absolute (relative paths are relative to
    the first data root; outputs go under the output root)."""

    def resolve(field: str, value: str, ref: PathRef | None) -> str:
        if field == "output":
            return confine_output(value, output_root)
        if ref is None:
            return confine_input(field, value, data_roots)
        return confine_file(field, value, data_roots + file_roots)

    return resolve_paths(spec, resolve)
