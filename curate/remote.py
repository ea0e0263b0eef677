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
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from curate.loader import ManifestError
from filters.lm.models import file_sha256, stream_sha256

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The service could not be reached or refused a request; the message names the URL.
    Partial downloads stay in the cache and resume on the next call."""


@dataclass
class Fetched:
    folder: Path  # the local copy: manifest.json and the shards
    downloaded: int = 0  # bytes transferred by this call
    resumed: list[str] = field(default_factory=list)  # shards continued from a partial download
    reused: list[str] = field(default_factory=list)  # shards already complete in the cache


def default_cache() -> Path:
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate") / "jobs"


def fetch_job(base_url: str, job_id: str, *, cache_dir: str | Path | None = None, api_key: str | None = None,
              timeout: float = 60, progress: Callable[[str, int, int], None] | None = None,
              chunk_size: int = CHUNK) -> Fetched:
    """Bring job ``job_id``'s output from the service at ``base_url`` into
    ``cache_dir/<host_port>/<job_id>`` (default ``$CURATE_CACHE`` or ``~/.cache/curate``).
    ``api_key`` defaults to ``$CURATE_API_KEY``. ``progress(shard, bytes_done, bytes_total)``
    is called after every chunk."""
    base = base_url.rstrip("/")
    host = urllib.parse.urlsplit(base).netloc.replace(":", "_") or "local"
    folder = Path(cache_dir) if cache_dir is not None else default_cache()
    folder = folder / host / job_id
    key = api_key if api_key is not None else os.environ.get("CURATE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    job = urllib.parse.quote(job_id, safe="")
    with _open(f"{base}/jobs/{job}/manifest", headers, timeout) as response:
        manifest_bytes = response.read()
    manifest = json.loads(manifest_bytes)
    fetched = Fetched(folder)
    for facts in manifest["files"]:
        target = _inside(folder, facts["path"])
        if target.exists() and target.stat().st_size == facts["bytes"] and file_sha256(target) == facts["sha256"]:
            fetched.reused.append(facts["path"])
            continue
        url = f"{base}/jobs/{job}/outputs/{urllib.parse.quote(target.name)}"
        _download(url, target, facts, _Call(headers, timeout, chunk_size, progress), fetched)
    tmp = folder / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_bytes(manifest_bytes)
    os.replace(tmp, folder / "manifest.json")
    return fetched


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
    if have and have == facts["bytes"]:  # interrupted after the last byte, before the rename
        with open(part, "rb") as f:
            stream_sha256(f, digest)
        fetched.resumed.append(facts["path"])
    else:
        request = dict(call.headers)
        if have:
            request |= {"Range": f"bytes={have}-", "If-Range": f'"{facts["sha256"]}"'}
        with _open(url, request, call.timeout) as response:
            if have and response.status == 206:
                with open(part, "rb") as f:
                    stream_sha256(f, digest)
                fetched.resumed.append(facts["path"])
                mode = "ab"
            else:  # a full answer: the server ignored the range or the shard changed
                have, mode = 0, "wb"
            with open(part, mode) as out:
                for chunk in iter(lambda: response.read(call.chunk_size), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    fetched.downloaded += len(chunk)
                    if call.progress:
                        call.progress(facts["path"], have, facts["bytes"])
    if digest.hexdigest() != facts["sha256"]:
        part.unlink()
        raise ManifestError(f"{facts['path']}: the download from {url} has sha256 {digest.hexdigest()[:16]}…, the "
                            f"manifest says {facts['sha256'][:16]}… (discarded; the next call downloads it again)")
    os.replace(part, target)


def _open(url: str, headers: dict[str, str], timeout: float):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise FetchError(f"GET {url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"GET {url}: cannot reach the service ({getattr(exc, 'reason', exc)}); partial downloads "
                         "are kept and resume on the next call") from None
