"""A user-space TCP proxy that delays, drops, duplicates and corrupts traffic.

`tc netem` and iptables are absent here, so faults are injected between two agents by
pointing one at this proxy. Decisions are per chunk read, from a seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Faults:
    delay: float = 0.0  # seconds added per chunk
    drop: float = 0.0  # probability a connection is cut at a chunk
    duplicate: float = 0.0  # probability a chunk is sent twice
    corrupt: float = 0.0  # probability one bit of a chunk is flipped
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {
        "chunks": 0, "dropped": 0, "duplicated": 0, "corrupted": 0})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class FaultProxy:
    def __init__(self, listen_port: int, target: tuple[str, int], faults: Faults) -> None:
        self.port = listen_port
        self.target = target
        self.faults = faults
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw), return_exceptions=True)
        for w in (cw, uw):
            w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        f = self.faults
        while data := await r.read(65536):
            f.counts["chunks"] += 1
            if f.rng.random() < f.drop:
                f.counts["dropped"] += 1
                w.close()
                return
            if f.rng.random() < f.corrupt:
                f.counts["corrupted"] += 1
                b = bytearray(data)
                b[f.rng.randrange(len(b))] ^= 1 << f.rng.randrange(8)
                data = bytes(b)
            if f.delay:
                await asyncio.sleep(f.delay)
            w.write(data)
            if f.rng.random() < f.duplicate:
                f.counts["duplicated"] += 1
                w.write(data)
            await w.drain()
        w.close()
