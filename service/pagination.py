"""Cursor pagination: a page is the rows after the last row of the previous page in a
stable sort order; the cursor is that row's sort key, opaque to clients."""

from __future__ import annotations

import base64
import json
from typing import Any

from service.errors import ServiceError

MAX_LIMIT = 1000


def encode(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str | None, arity: int) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        key = None
    if not isinstance(key, list) or len(key) != arity:
        raise ServiceError(422, "invalid cursor: pass the `next` value of the previous page unchanged",
                           code="invalid_request", details=[{"loc": "query.cursor", "msg": "invalid cursor"}])
    return key


def page(rows: list[dict], limit: int, key_of) -> dict:
    """``rows`` holds up to limit + 1 rows in sort order; the extra one says there is more."""
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next": encode(key_of(rows[-1])) if more and rows else None}
