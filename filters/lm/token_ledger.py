"""A job's token budget for paid generations, shared by every process of the job through
files in the stage's workspace: each process keeps its own running total in its own file
(written atomically), and the job's spend is the sum of the files. Generations served
from the cache cost nothing and are not counted.

The check happens before each request, so the overshoot is bounded by the requests in
flight when the budget runs out (concurrency × (prompt + max_tokens) per process).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path


class BudgetSpent(RuntimeError):
    code = "token_budget_spent"


class TokenLedger:
    def __init__(self, folder: Path | None, limit: int | None) -> None:
        """``folder`` None: this process's spend only (a stage used outside a job)."""
        self.folder, self.limit = folder, limit
        self._mine = folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json" if folder else None
        self._spent = 0
        self._lock = threading.Lock()

    def spent(self) -> int:
        """Tokens paid for by every process of the job so far (this rerun's and earlier ones)."""
        if self.folder is None:
            return self._spent
        total = 0
        for path in self.folder.glob("*.json"):
            try:
                total += int(json.loads(path.read_text())["tokens"])
            except (OSError, ValueError, KeyError):  # being replaced right now: its old total is gone
                continue
        return total

    def check(self, stage: str) -> None:
        if self.limit is not None and (used := self.spent()) >= self.limit:
            raise BudgetSpent(f"{stage}: the job's token budget (max_total_tokens={self.limit}) is spent: {used} "
                              "tokens generated or read by the model. Finished generations are cached in the job "
                              "folder; rerun with a larger max_total_tokens to continue where it stopped.")

    def add(self, tokens: int) -> None:
        with self._lock:
            self._spent += tokens
            if self.folder is None or self._mine is None:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._mine.with_name(f".{self._mine.name}.tmp")
            tmp.write_text(json.dumps({"tokens": self._spent}))
            os.replace(tmp, self._mine)
