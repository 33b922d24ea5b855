"""Recent events of one node (joins, deaths, accepted states, applies), kept in memory
for the API and the dashboard, and echoed to the log.

A failure that retries (a full disk refusing every gossip pull) must not drown either:
`EventLog.problem` puts one event per episode, until `solved` ends it, and `RepeatFilter`
lets one log line per distinct message through per minute (with a count of the rest).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("mycelium")

STORAGE = "storage"  # the problem kind of a disk that refuses this node's writes
RAFT_DATA = "raft-data"  # ... of Raft files (journal) this node cannot read
REPEAT_WINDOW = 60.0  # seconds a repeated log line stays quiet after it was shown


class EventLog:
    def __init__(self, size: int = 200) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self.problems: dict[str, str] = {}  # what is wrong now, by kind

    def add(self, kind: str, message: str, **fields: Any) -> None:
        self._events.append({"time": time.time(), "kind": kind, "message": message, **fields})
        log.info("%s: %s", kind, message)

    def problem(self, kind: str, message: str) -> None:
        """Something that fails until an operator acts: one event (and log line) when it
        starts, none while it persists; `solved(kind)` ends the episode."""
        if kind not in self.problems:
            self._events.append({"time": time.time(), "kind": kind, "message": message})
            log.error("%s: %s", kind, message)
        self.problems[kind] = message  # the latest wording (it may name a newer version)

    def solved(self, kind: str) -> None:
        if self.problems.pop(kind, None) is not None:
            self.add(kind, "resolved")

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        return list(self._events)[-n:]


class RepeatFilter(logging.Filter):
    """One line per distinct message (and exception) per `window` seconds; the next one
    shown says how many were held back. Installed on the agent's log handler, so it also
    covers what libraries (asyncio, aiohttp) log about a failure that repeats."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (shown at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.getMessage(), f"{type(exc).__name__}: {exc}" if exc else "")
        now = self.clock()
        shown, held = self._seen.get(key, (None, 0))
        if shown is not None and now - shown < self.window:
            self._seen[key] = (shown, held + 1)
            return False
        if len(self._seen) > 1000:  # forget old keys (messages that vary never stop)
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it held back)"
        return True
