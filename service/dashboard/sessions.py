"""Dashboard sessions: a login with an API key opens a session whose random id goes into
an HttpOnly, SameSite=Strict cookie. The key stays on the server, in memory, and is
checked against the key store on every request, so revoking a key ends its sessions.
Sessions end after ``ttl`` seconds or on logout, and with the process."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "curate_session"
CSRF_HEADER = "X-Curate-CSRF"


@dataclass(frozen=True)
class Session:
    key: str
    csrf: str  # sent back by the pages' scripts on every state-changing request
    expires: float


class SessionStore:
    def __init__(self, ttl: float = 12 * 3600) -> None:
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, key: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(key=key, csrf=secrets.token_urlsafe(16), expires=time.time() + self.ttl)
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
        return session if session is not None and session.expires > time.time() else None

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)
