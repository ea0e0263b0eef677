"""A token bucket per API key, so one runaway client cannot starve the others."""

from __future__ import annotations

import hashlib
import threading
import time


class RateLimiter:
    """``rate`` requests per second per key, up to ``burst`` at once; ``rate`` 0 turns it off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key hash -> (tokens, when)
        self._lock = threading.Lock()  # auth dependencies run in the threadpool

    def wait(self, key: str) -> float:
        """0 when the key may make a request now (one token is taken), else the seconds
        until it may."""
        if self.rate <= 0:
            return 0.0
        bucket = hashlib.sha256(key.encode()).hexdigest()  # never keep the key itself
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(bucket, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1:
                self._buckets[bucket] = (tokens - 1, now)
                return 0.0
            self._buckets[bucket] = (tokens, now)
            return (1 - tokens) / self.rate
