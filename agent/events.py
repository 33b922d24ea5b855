"""Recent events of one node (joins, deaths, accepted states, applies), kept in memory
for the API and the dashboard, and echoed to the log."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("mycelium")


class EventLog:
    def __init__(self, size: int = 200) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, kind: str, message: str, **fields: Any) -> None:
        self._events.append({"time": time.time(), "kind": kind, "message": message, **fields})
        log.info("%s: %s", kind, message)

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        return list(self._events)[-n:]
