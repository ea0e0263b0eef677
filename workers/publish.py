"""``curate publish``: a finished job's output copied to object storage (any fsspec URL:
``s3://``, ``gs://``, ``az://``; or another folder) in the layout ``curate.loader`` reads:
the shards the manifest lists, at the same relative paths, then ``manifest.json``.

* Every shard is checked against the manifest (sha256) before it is uploaded, and its
  stored size against the manifest after; a mismatch stops the publication and names
  the shard.
* ``manifest.json`` goes up last, in one write. An object store shows an object whole or
  not at all, so a reader sees a complete publication or none: ``CuratedDataset``
  refuses a prefix without a manifest. An interrupted publication leaves no manifest;
  running the same command again uploads the shards again and finishes it.
* A prefix that already holds a manifest is refused unless ``overwrite``. Replacing
  removes the old manifest first, then the old shards the new manifest does not list.

Credentials and endpoints come from the filesystem's own configuration: for ``s3://``
(s3fs, botocore) ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` /
``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``, or ``storage_options``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from filters.lm.models import file_sha256
from workers.job_folder import JobFolder

MANIFEST = "manifest.json"


class PublishError(RuntimeError):
    """The output could not be published; the message names the file or URL. When it is
    raised, the destination has no manifest from this publication."""


@dataclass
class Published:
    url: str  # the destination, as CuratedDataset takes it
    job_id: str
    files: int
    bytes: int
    replaced: str | None = None  # the job id of the publication this one replaced
    removed: list[str] = field(default_factory=list)  # its shards this one does not list
    not_removed: list[str] = field(default_factory=list)  # those that could not be deleted (message each)


def destination(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and root path of ``url``; a missing backend names its package."""
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # fsspec names the package: "Install s3fs to access S3"
        extra = " (pip install 'curate[s3]')" if url.startswith(("s3://", "s3a://")) else ""
        raise PublishError(f"{url}: {exc}{extra}") from None
    except (ValueError, TypeError) as exc:
        raise PublishError(f"{url}: cannot open: {exc}") from None
    return fs, root.rstrip("/")


def publish(source: str | Path, url: str, *, overwrite: bool = False, storage_options: dict[str, Any] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> Published:
    """Copy the finished job in folder ``source`` to ``url``; ``progress(shard, done, total)``
    is called after each shard."""
    folder = JobFolder(source)
    if not folder.complete():
        raise PublishError(f"{folder.root}: no {MANIFEST}: only a finished job's output can be published")
    manifest_bytes = folder.manifest.read_bytes()
    manifest = json.loads(manifest_bytes)
    files = manifest["files"]
    for facts in files:
        if not _inside(facts["path"]):
            raise PublishError(f"{folder.manifest}: {facts['path']!r} is not a path inside the job folder")
    fs, root = destination(url, storage_options)
    base = url.rstrip("/")
    local = isinstance(fs, LocalFileSystem)
    job_root = folder.root.resolve()
    if local and (Path(root).resolve() == job_root or job_root in Path(root).resolve().parents):
        raise PublishError(f"{url}: the destination is the job folder itself or inside it")
    target = f"{root}/{MANIFEST}"
    result = Published(url=url, job_id=manifest.get("job_id", ""), files=len(files),
                       bytes=sum(f["bytes"] for f in files))
    old = _existing(fs, target, base, overwrite)
    if old is not None:
        result.replaced = old.get("job_id") or "?"
        _call(f"cannot remove {base}/{MANIFEST}", fs.rm_file, target)  # readers stop trusting the old shards first
    for i, facts in enumerate(files):
        _upload(fs, folder.root / facts["path"], f"{root}/{facts['path']}", f"{base}/{facts['path']}", facts, local)
        if progress:
            progress(facts["path"], i + 1, len(files))
    if old is not None:
        listed = {f.get("path") for f in old.get("files", []) if isinstance(f, dict)}
        for stale in sorted(p for p in listed - {f["path"] for f in files} if isinstance(p, str) and _inside(p)):
            try:
                fs.rm_file(f"{root}/{stale}")
                result.removed.append(stale)
            except FileNotFoundError:
                pass
            except OSError as exc:
                result.not_removed.append(f"{stale}: {exc}")
    _write_manifest(fs, target, f"{base}/{MANIFEST}", manifest_bytes, local)
    return result


def _inside(path: str) -> bool:
    """A manifest's file path that stays inside the folder (relative, no ``..``)."""
    rel = PurePosixPath(path)
    return bool(path) and not rel.is_absolute() and ".." not in rel.parts


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)`` with a storage failure (OSError: permissions, a missing bucket, the
    network; botocore's credential errors) turned into a PublishError that says what failed."""
    try:
        return fn(*args, **kwargs)
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001 - every backend raises its own types; reported with the URL
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise PublishError(f"{what}: {detail}") from exc


def _existing(fs: Any, target: str, base: str, overwrite: bool) -> dict | None:
    """The manifest already published at the destination, if any; refused without ``overwrite``."""
    fs.invalidate_cache()  # a listing cached by an earlier call in this process is stale
    try:
        raw = _call(f"cannot read {base}/{MANIFEST}", fs.cat_file, target)
    except PublishError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    try:
        old = json.loads(raw)
    except ValueError:
        old = None
    old = old if isinstance(old, dict) else {}
    if not overwrite:
        raise PublishError(f"{base}/{MANIFEST} exists: {base} already holds a published job "
                           f"({old.get('job_id') or 'unknown'}); pass --overwrite to replace it")
    return old


def _upload(fs: Any, src: Path, dst: str, dst_url: str, facts: dict, local: bool) -> None:
    if not src.is_file():
        raise PublishError(f"{src}: listed in the job's manifest but missing; no manifest was written")
    digest = file_sha256(src)
    if digest != facts["sha256"]:
        raise PublishError(f"{src}: sha256 {digest[:16]}… does not match the manifest's {facts['sha256'][:16]}… "
                           "(changed since the job wrote it); no manifest was written")
    if local:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    _call(f"cannot upload {src} to {dst_url}", fs.put_file, str(src), dst)
    fs.invalidate_cache(dst)
    stored = _call(f"cannot check {dst_url}", fs.size, dst)
    if stored != facts["bytes"]:
        raise PublishError(f"{dst_url}: {stored} bytes stored, the manifest says {facts['bytes']}; "
                           "no manifest was written")


def _write_manifest(fs: Any, target: str, target_url: str, data: bytes, local: bool) -> None:
    """The manifest in one step: a single object PUT, or a rename on a filesystem."""
    if local:
        tmp = f"{target}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp).write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise PublishError(f"cannot write {target_url}: {exc}") from exc
    else:
        _call(f"cannot upload {target_url}", fs.pipe_file, target, data)
    fs.invalidate_cache(target)
    if _call(f"cannot read back {target_url}", fs.cat_file, target) != data:
        fs.rm_file(target)
        raise PublishError(f"{target_url}: the stored manifest differed from the job's and was removed")
