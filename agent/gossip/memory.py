"""An in-process network for tests and simulations: per-message loss, latency, partitions
and downed nodes, seeded, counting every byte carried. Nodes are anything that answers
`handle(data) -> reply` (a LatentSpore)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Protocol

from agent.errors import PeerError


class Handler(Protocol):
    async def handle(self, data: bytes) -> bytes: ...


@dataclass
class MemoryNetwork:
    """In-process network: per-message loss, latency and partitions, seeded."""

    loss: float = 0.0
    latency: float = 0.0
    seed: int = 0
    nodes: dict[str, Handler] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    side: dict[str, int] = field(default_factory=dict)  # a partition: only sides meet
    down: set[str] = field(default_factory=set)
    bytes: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def transport(self, src: str) -> MemoryTransport:
        return MemoryTransport(self, src)


@dataclass
class MemoryTransport:
    net: MemoryNetwork
    src: str

    async def request(self, addr: str, data: bytes, timeout: float) -> bytes:
        n = self.net
        n.bytes += len(data)
        dst = n.nodes.get(addr)
        lost = n.rng.random() < n.loss or n.rng.random() < n.loss  # request or reply
        if (dst is None or addr in n.down or self.src in n.down
                or n.side.get(self.src, 0) != n.side.get(addr, 0)
                or (n.cut and frozenset((self.src, addr)) in n.cut) or lost):
            await asyncio.sleep(timeout)
            raise PeerError(f"{addr}: timeout")
        if n.latency:
            await asyncio.sleep(n.latency)
        reply = await asyncio.wait_for(dst.handle(data), timeout)
        n.bytes += len(reply)
        return reply
