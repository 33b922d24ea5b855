"""A small asyncio client of QEMU's Machine Protocol (QMP) over a unix socket.

QMP is JSON objects, one per line: a greeting, then `qmp_capabilities`, then commands
each answered by `{"return": ...}` or `{"error": ...}`, with asynchronous events
(`{"event": ...}`) interleaved anywhere. Commands are sent one at a time (QMP answers in
order); events are kept in a short list the supervisor reads (SHUTDOWN, POWERDOWN).
About 80 lines, so no dependency (`qemu.qmp` on PyPI) is needed for the few commands the
supervisor sends, and a checkpoint command (`migrate`) for issue 15 is one more call.
Every read has a deadline and a line cap: a wedged QEMU cannot hang the agent.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import Any

from agent.errors import PeerError

LINE_CAP = 1 << 20  # bytes one QMP message may take
EVENTS_KEPT = 64


class QmpError(PeerError):
    """QEMU refused a command, closed the socket or did not answer in time."""


class Qmp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r, self._w = reader, writer
        self._lock = asyncio.Lock()
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> Qmp:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=LINE_CAP), timeout)
        except (OSError, TimeoutError) as e:
            raise QmpError(f"QMP socket {path}: {e}") from e
        q = cls(r, w)
        try:
            greeting = await q._read(timeout)
            if "QMP" not in greeting:
                raise QmpError(f"QMP socket {path}: no greeting ({greeting})")
            await q.execute("qmp_capabilities", timeout=timeout)
        except BaseException:
            await q.close()
            raise
        return q

    async def _read(self, timeout: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self._r.readline(), timeout)
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: over LINE_CAP
            raise QmpError(f"QMP read: {type(e).__name__}: {e}") from e
        if not line:
            raise QmpError("QMP socket closed (QEMU exited)")
        try:
            msg = json.loads(line)
        except ValueError as e:
            raise QmpError(f"QMP sent non-JSON: {line[:100]!r}") from e
        if not isinstance(msg, dict):
            raise QmpError(f"QMP sent {type(msg).__name__}, not an object")
        return msg

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 5.0) -> Any:
        """The command's `return` value; QmpError on an `error` reply or no answer."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        async with self._lock:
            try:
                self._w.write(json.dumps(msg).encode() + b"\n")
                await self._w.drain()
            except OSError as e:
                raise QmpError(f"QMP {command}: {e}") from e
            while True:
                reply = await self._read(timeout)
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    err = reply["error"] if isinstance(reply["error"], dict) else {}
                    raise QmpError(f"QMP {command}: {err.get('desc', reply['error'])}")
                return reply.get("return")

    async def status(self) -> str:
        """`running`, `paused`, `shutdown`, `postmigrate`, ... (query-status)."""
        ret = await self.execute("query-status")
        return str(ret.get("status", "?")) if isinstance(ret, dict) else "?"

    async def close(self) -> None:
        self._w.close()
        try:
            await self._w.wait_closed()
        except OSError:
            pass
