"""Live job state as server-sent events: one poll feeds every viewer.

The poller refreshes each running job once per ``poll_seconds`` and calls
``JobEvents.changed``; every open stream of that job then sends the new state once. A
dashboard watched by many people costs one small write per viewer per change instead
of a full request (auth, routing, serialisation) per viewer per poll.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from service.catalog import TERMINAL


class JobEvents:
    def __init__(self) -> None:
        self._next: dict[str, asyncio.Event] = {}  # job_id -> set at its next change

    def changed(self, job_id: str) -> None:
        event = self._next.pop(job_id, None)
        if event is not None:
            event.set()

    def next_change(self, job_id: str) -> asyncio.Event:
        return self._next.setdefault(job_id, asyncio.Event())


async def stream(events: JobEvents, job_id: str, view: Callable[[str], Awaitable[dict]],
                 keepalive: float = 15.0) -> AsyncIterator[bytes]:
    """``event: job`` with the job's view whenever it changes, a comment every
    ``keepalive`` seconds so proxies keep the connection open; ends after a final state."""
    sent = None
    while True:
        change = events.next_change(job_id)  # taken before the view: a change in between is not lost
        current = await view(job_id)
        payload = json.dumps(current, separators=(",", ":"))
        if payload != sent:
            yield f"event: job\ndata: {payload}\n\n".encode()
            sent = payload
        if current["state"] in TERMINAL:
            return
        try:
            await asyncio.wait_for(change.wait(), keepalive)
        except TimeoutError:
            yield b": keep-alive\n\n"
