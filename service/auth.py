"""API keys: random tokens, stored only as SHA-256 hashes in ``$CURATE_HOME/api_keys.json``.

Keys are 256-bit random strings, so a fast hash is enough (no password stretching).
The file is re-read when it changes, so `curate keys create` works while the
service runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from workers import atomic

Role = Literal["admin", "read"]
PREFIX = "curate_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: int | None = None
        self._keys: list[dict] = []

    def _load(self) -> list[dict]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._keys = None, []
            return self._keys
        if mtime != self._mtime:
            self._keys = atomic.read_json(self.path)["keys"]
            self._mtime = mtime
        return self._keys

    def create(self, role: Role, note: str = "") -> tuple[str, dict]:
        key = PREFIX + secrets.token_urlsafe(32)
        entry = {"id": secrets.token_hex(4), "role": role, "hash": _hash(key), "note": note,
                 "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        keys = list(self._load()) + [entry]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json({"keys": keys}, self.path)
        self.path.chmod(0o600)
        return key, entry

    def revoke(self, key_id: str) -> bool:
        keys = self._load()
        kept = [k for k in keys if k["id"] != key_id]
        if len(kept) == len(keys):
            return False
        atomic.write_json({"keys": kept}, self.path)
        return True

    def list(self) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "hash"} for e in self._load()]

    def role_of(self, key: str) -> Role | None:
        digest = _hash(key)
        role = None
        for entry in self._load():  # compare every entry: no timing hint of which matched
            if hmac.compare_digest(entry["hash"], digest):
                role = entry["role"]
        return role

    def ensure_admin(self) -> str | None:
        """On a first start with no keys, create an admin key and return it (shown once)."""
        if self._load():
            return None
        key, _ = self.create("admin", note="created on first start")
        return key
