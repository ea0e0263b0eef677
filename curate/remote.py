"""Download a finished job's output from a running curate service into a local cache.

The manifest comes first (``GET /jobs/{id}/manifest``); then each shard is streamed
(``GET /jobs/{id}/outputs/{name}``) into ``<name>.part``. An interrupted download keeps its
``.part`` and the next call continues it with an HTTP Range request (``If-Range`` on the
shard's sha256 ETag, so a shard that changed meanwhile starts over). A finished shard is
checked against the manifest's sha256 and renamed into place; ``manifest.json`` is written
last, so a cached folder that has one is complete. Standard library only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from curate.loader import ManifestError
from filters.lm.models import file_sha256, stream_sha256

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The service could not be reached or refused a request; the message names the URL.
    Partial downloads stay in the cache and resume on the next call."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable  # the service answered (with an error)


class _Corrupt(Exception):
    """A resumed download whose whole does not match: the partial file was not this shard's."""


@dataclass
class Fetched:
    folder: Path  # the local copy: manifest.json and the shards
    downloaded: int = 0  # bytes transferred by this call
    resumed: list[str] = field(default_factory=list)  # shards continued from a partial download
    reused: list[str] = field(default_factory=list)  # shards already complete in the cache
    offline: bool = False  # the service was unreachable: the cached copy was used as it is


def default_cache() -> Path:
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate") / "jobs"


def fetch_job(base_url: str, job_id: str, *, cache_dir: str | Path | None = None, api_key: str | None = None,
              timeout: float = 60, progress: Callable[[str, int, int], None] | None = None,
              chunk_size: int = CHUNK) -> Fetched:
    """Bring job ``job_id``'s output from the service at ``base_url`` into
    ``cache_dir/<host_port>/<job_id>`` (default ``$CURATE_CACHE`` or ``~/.cache/curate``).
    ``api_key`` defaults to ``$CURATE_API_KEY``. ``progress(shard, bytes_done, bytes_total)``
    is called after every chunk.

    Processes fetching the same job (every rank of a training run) take turns through a
    lock file in the cache, so each shard is downloaded once. A job already complete in
    the cache is used as it is when the service cannot be reached (with a warning)."""
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise ValueError(f"{job_id!r} is not a job id")
    base = base_url.rstrip("/")
    host = urllib.parse.urlsplit(base).netloc.replace(":", "_") or "local"
    folder = (Path(cache_dir) if cache_dir is not None else default_cache()) / host / job_id
    folder.mkdir(parents=True, exist_ok=True)
    key = api_key if api_key is not None else os.environ.get("CURATE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    job = urllib.parse.quote(job_id, safe="")
    with _locked(folder / ".lock"):
        try:
            with _open(f"{base}/jobs/{job}/manifest", headers, timeout) as response:
                manifest_bytes = response.read()
        except FetchError as exc:
            if exc.reachable or not (folder / "manifest.json").exists():
                raise
            warnings.warn(f"{exc}; using the complete copy cached in {folder}", stacklevel=2)
            return Fetched(folder, offline=True)
        manifest = json.loads(manifest_bytes)
        fetched = Fetched(folder)
        for facts in manifest["files"]:
            target = _inside(folder, facts["path"])
            if target.exists() and target.stat().st_size == facts["bytes"] and \
                    file_sha256(target) == facts["sha256"]:
                fetched.reused.append(facts["path"])
                continue
            url = f"{base}/jobs/{job}/outputs/{urllib.parse.quote(target.name)}"
            call = _Call(headers, timeout, chunk_size, progress)
            try:
                _download(url, target, facts, call, fetched)
            except _Corrupt:  # a partial file that was not this shard's beginning: once more, whole
                _download(url, target, facts, call, fetched)
        tmp = folder / f".manifest.json.{os.getpid()}.tmp"
        tmp.write_bytes(manifest_bytes)
        os.replace(tmp, folder / "manifest.json")
    return fetched


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; elsewhere, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: processes must not fetch the same job at once
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _inside(folder: Path, relative: str) -> Path:
    """``folder/relative``, refusing a manifest path that would land outside the cache."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ManifestError(f"{relative}: a manifest path must be relative and stay inside the job folder")
    return folder.joinpath(*parts)


@dataclass
class _Call:
    headers: dict[str, str]
    timeout: float
    chunk_size: int
    progress: Callable[[str, int, int], None] | None


def _download(url: str, target: Path, facts: dict, call: _Call, fetched: Fetched) -> None:
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > facts["bytes"]:  # not this shard's beginning
        part.unlink()
        have = 0
    digest = hashlib.sha256()
    resumed = False

    def continue_from_part() -> None:  # the digest covers the bytes already on disk
        nonlocal resumed
        with open(part, "rb") as f:
            stream_sha256(f, digest)
        fetched.resumed.append(facts["path"])
        resumed = True

    if have and have == facts["bytes"]:  # interrupted after the last byte, before the rename
        continue_from_part()
    else:
        request = dict(call.headers)
        if have:
            request |= {"Range": f"bytes={have}-", "If-Range": f'"{facts["sha256"]}"'}
        with _open(url, request, call.timeout) as response:
            if have and response.status == 206:
                continue_from_part()
                mode = "ab"
            else:  # a full answer: the server ignored the range or the shard changed
                have, mode = 0, "wb"
            with open(part, mode) as out:
                try:
                    for chunk in iter(lambda: response.read(call.chunk_size), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        fetched.downloaded += len(chunk)
                        if call.progress:
                            call.progress(facts["path"], have, facts["bytes"])
                except (OSError, http.client.HTTPException) as exc:
                    raise FetchError(f"{facts['path']}: the download from {url} broke off after {have:,} of "
                                     f"{facts['bytes']:,} bytes ({exc or type(exc).__name__}); the next call "
                                     "resumes it", reachable=False) from None
    if digest.hexdigest() != facts["sha256"]:
        part.unlink()
        message = (f"{facts['path']}: the download from {url} has sha256 {digest.hexdigest()[:16]}…, the manifest "
                   f"says {facts['sha256'][:16]}…")
        if resumed:  # the partial file was not this shard's beginning
            raise _Corrupt(message)
        raise ManifestError(f"{message} (discarded)")
    os.replace(part, target)


def _open(url: str, headers: dict[str, str], timeout: float):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise FetchError(f"GET {url}: HTTP {exc.code}: {message}", reachable=True) from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"GET {url}: cannot reach the service ({getattr(exc, 'reason', exc)}); partial downloads "
                         "are kept and resume on the next call", reachable=False) from None
