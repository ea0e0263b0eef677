"""Confine job inputs and outputs to the configured roots.

Rejected with a 400: ``..`` components, absolute paths outside the roots, symlinks
that resolve outside them, and remote URLs.
"""

from __future__ import annotations

import glob
from pathlib import Path

from service.errors import ServiceError

_GLOB = "*?["


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _reject_dotdot(field: str, value: str) -> None:
    if "://" in value:
        raise ServiceError(400, f"{field}: remote URLs are not accepted by this service ({value!r})",
                           code="path_not_allowed")
    if ".." in Path(value).parts:
        raise ServiceError(400, f"{field}: '..' is not allowed in paths ({value!r})", code="path_not_allowed")


def confine_input(field: str, value: str, roots: list[Path]) -> str:
    _reject_dotdot(field, value)
    path = Path(value) if Path(value).is_absolute() else roots[0] / value
    # The fixed part of a glob must resolve inside a root, and so must every match.
    fixed = Path(*[p for p in path.parts if not any(c in p for c in _GLOB)][: _fixed_len(path)])
    if not _inside(fixed.resolve(), roots):
        raise ServiceError(400, f"{field}: {value!r} is outside the allowed input roots",
                           code="path_not_allowed", details={"roots": [str(r) for r in roots]})
    for match in glob.glob(str(path)):
        if not _inside(Path(match).resolve(), roots):
            raise ServiceError(400, f"{field}: {match!r} resolves outside the allowed input roots (symlink?)",
                               code="path_not_allowed")
    return str(path)


def _fixed_len(path: Path) -> int:
    for i, part in enumerate(path.parts):
        if any(c in part for c in _GLOB):
            return i
    return len(path.parts)


def confine_output(value: str, root: Path) -> str:
    _reject_dotdot("output", value)
    path = Path(value) if Path(value).is_absolute() else root / value
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not _inside(path.absolute(), [root]) or not _inside(existing.resolve(), [root]):
        raise ServiceError(400, f"output: {value!r} is outside the output root {root}", code="path_not_allowed")
    return str(path)
