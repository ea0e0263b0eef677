"""A content-addressed cache of finished LLM generations (``rephrase_v1`` keeps one in its
job workspace): a crashed, cancelled or retried job never pays twice for the same chunk.

The key is the SHA256 of everything that determines a generation: the model's identity
(file hash or server model id), the exact chat messages and the sampling parameters. A
record is one JSON file under ``<folder>/<key[:2]>/<key>.json``, written under a temporary
name and renamed, so a generation killed mid-write leaves no half record; two workers that
finish the same key write the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def generation_key(model_id: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
    canonical = json.dumps({"model": model_id, "messages": messages, "sampling": sampling},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class GenerationCache:
    folder: Path
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a generation key: {key!r}")
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(path.read_text(encoding="utf-8"))

    def put(self, key: str, record: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps(record, sort_keys=True, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
