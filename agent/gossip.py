"""The Latent spore's I/O shell: SWIM rounds over a transport, and its wire format.

`LatentSpore` is an async context manager that owns its round task. The protocol rules
live in agent/swim.py; this module only moves messages. Transports implement one call,
`request(addr, msg, timeout) -> reply`: `HttpTransport` (aiohttp over mutual TLS, as the
agent runs) and `MemoryNetwork` (in-process, with loss and partitions, for tests and
simulations). Every inbound message is size-capped and strictly checked; a bad one is
dropped and counted, never raised into the round loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from agent.errors import DataError, PeerError
from agent.serial import canonical
from agent.swim import RANK, Event, Member, Membership

MAX_MSG_BYTES = 256 * 1024
MAX_MEMBERS = 4096
MSG_PATH = "/latent/v1/msg"
TYPES = ("ping", "ping-req", "sync", "ack", "nack")
MAX_PIGGYBACK = 32
RETRANSMIT_MULT = 4


class MessageError(DataError):
    """A gossip message that is malformed, oversized or truncated."""


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    members: tuple[Member, ...] = ()
    target: str = ""  # ping-req: address to probe on the sender's behalf

    def encode(self) -> bytes:
        return canonical({"type": self.type, "from": self.sender, "target": self.target,
                          "members": [m.wire() for m in self.members]})


def decode(data: bytes) -> Message:
    if len(data) > MAX_MSG_BYTES:
        raise MessageError(f"gossip message of {len(data)} bytes over the cap")
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError("gossip message is not JSON (truncated or corrupt)") from e
    if not isinstance(d, dict) or d.get("type") not in TYPES:
        raise MessageError("gossip message has no valid type")
    ms = d.get("members")
    if not isinstance(d.get("from"), str) or not isinstance(ms, list) or len(ms) > MAX_MEMBERS:
        raise MessageError("gossip message lacks sender or member list")
    members = []
    for m in ms:
        if not (isinstance(m, dict) and isinstance(m.get("name"), str)
                and isinstance(m.get("addr"), str) and _int(m.get("incarnation"))
                and m.get("state") in RANK and isinstance(m.get("meta"), dict)
                and _int(m.get("meta_version"))):
            raise MessageError("gossip message has a malformed member record")
        members.append(Member(m["name"], m["addr"], m["incarnation"], m["state"], m["meta"],
                              m["meta_version"]))
    target = d.get("target", "")
    if not isinstance(target, str):
        raise MessageError("gossip message target must be a string")
    return Message(d["type"], d["from"], tuple(members), target)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class Transport(Protocol):
    async def request(self, addr: str, data: bytes, timeout: float) -> bytes: ...


class HttpTransport:
    """POST to a peer's agent API over mutual TLS."""

    def __init__(self, ssl_ctx: ssl.SSLContext) -> None:
        self.ssl = ssl_ctx
        self.session: aiohttp.ClientSession | None = None

    async def request(self, addr: str, data: bytes, timeout: float) -> bytes:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.post(f"https://{addr}{MSG_PATH}", data=data, ssl=self.ssl,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.content.read(MAX_MSG_BYTES + 1)
                if r.status != 200:
                    raise PeerError(f"{addr} answered {r.status}")
                return body
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, DataError) as e:
            raise PeerError(f"{addr}: {type(e).__name__}") from e

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    def reset(self) -> None:
        """Drop pooled connections, so the next request handshakes (and is checked) anew:
        a peer revoked after we connected to it must not keep a kept-alive connection."""
        old, self.session = self.session, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())


@dataclass
class MemoryNetwork:
    """In-process network: per-message loss, latency and partitions, seeded."""

    loss: float = 0.0
    latency: float = 0.0
    seed: int = 0
    nodes: dict[str, LatentSpore] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
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
                or frozenset((self.src, addr)) in n.cut or lost):
            await asyncio.sleep(timeout)
            raise PeerError(f"{addr}: timeout")
        if n.latency:
            await asyncio.sleep(n.latency)
        reply = await asyncio.wait_for(dst.handle(data), timeout)
        n.bytes += len(reply)
        return reply


class LatentSpore:
    def __init__(self, name: str, addr: str, transport: Transport, *, interval: float = 0.2,
                 fanout: int = 3, indirect: int = 3,
                 get_meta: Callable[[], dict[str, Any]] = dict,
                 on_event: Callable[[Event], None] | None = None,
                 on_merge: Callable[[], Awaitable[None] | None] | None = None,
                 incarnation: int | None = None, seed: int | None = None,
                 clock: Callable[[], float] = time.time, sync_every: int = 10) -> None:
        self.clock = clock  # a simulation passes its loop's virtual time
        inc = incarnation if incarnation is not None else int(clock() * 1000)
        self.ms = Membership(Member(name, addr, inc, meta=get_meta(), seen=clock()), seed)
        self.sync_every = sync_every
        self._rounds = 0
        # Piggyback queue: member name -> transmissions left (SWIM's lambda * log n).
        self._pending: dict[str, int] = {}
        self.transport = transport
        self.interval = interval
        self.fanout = fanout
        self.indirect = indirect
        self.get_meta = get_meta
        self.on_event = on_event
        self.on_merge = on_merge
        self.counters = {"malformed": 0, "sent": 0, "received": 0, "failed_requests": 0}
        self._task: asyncio.Task | None = None
        self._seeds: list[str] = []  # retried while we know no live member

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> LatentSpore:
        self._task = asyncio.create_task(self._run(), name=f"latent-{self.ms.me.name}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        close = getattr(self.transport, "close", None)
        if close:
            await close()

    async def join(self, addrs: list[str]) -> int:
        """Sync with each known address; returns how many answered."""
        addrs = [a for a in dict.fromkeys(addrs) if a != self.ms.me.addr]
        self._seeds = list(dict.fromkeys(self._seeds + addrs))[-16:]
        results = await asyncio.gather(*(self._send(a, "sync") for a in addrs))
        return sum(r is not None for r in results)

    async def leave(self) -> None:
        self.ms.leave()
        await asyncio.gather(*(self._send(m.addr, "sync")
                               for m in self.ms.gossip_targets(self.fanout)))

    def refresh(self) -> None:
        self.ms.set_meta(self.get_meta())

    # --- views ------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        me = self.ms.me
        rows = [(me, self.clock())] + [(m, m.seen) for m in self.ms.members.values()]
        return [{"name": m.name, "addr": m.addr, "state": m.state,
                 "incarnation": m.incarnation, "role": m.meta.get("role"),
                 "version": m.meta.get("version", 0), "sha256": m.meta.get("sha256", ""),
                 "status": m.meta.get("status", {}), "raft": _obj(m.meta.get("raft")),
                 "fp": m.meta.get("fp", ""), "pv": m.meta.get("pv", 0),
                 "last_seen": seen or None}
                for m, seen in rows]

    # --- protocol ---------------------------------------------------------------------

    def _msg(self, type_: str, target: str = "", full: bool = False) -> bytes:
        return Message(type_, self.ms.me.name, tuple(self._records(full)), target).encode()

    def _records(self, full: bool) -> list[Member]:
        """Full digest for syncs (join, anti-entropy); otherwise our own record plus the
        recent changes still owed retransmissions, so messages stay small at any size."""
        if full:
            return [self.ms.me] + list(self.ms.members.values())
        out = [self.ms.me]
        for name in list(self._pending)[-MAX_PIGGYBACK:]:
            m = self.ms.members.get(name)
            if m is not None:
                out.append(m)
            self._pending[name] -= 1
            if self._pending[name] <= 0 or m is None:
                del self._pending[name]
        return out

    def _enqueue(self, name: str) -> None:
        if name != self.ms.me.name:
            n = len(self.ms.members) + 2
            self._pending.pop(name, None)  # re-queue at the newest end
            self._pending[name] = RETRANSMIT_MULT * max(1, math.ceil(math.log10(n)))

    async def handle(self, data: bytes) -> bytes:
        """Inbound message -> reply bytes. Raises MessageError for the server to count."""
        self.counters["received"] += len(data)
        try:
            msg = decode(data)
        except MessageError:
            self.counters["malformed"] += 1
            raise
        await self._absorb(msg)
        if msg.type == "ping-req":
            ok = await self._send(msg.target, "ping",
                                  timeout=self.ms.probe_timeout(self.interval)) is not None
            return self._msg("ack" if ok else "nack")
        return self._msg("ack", full=msg.type == "sync")

    async def _absorb(self, msg: Message) -> None:
        now = self.clock()
        for e in self.ms.merge(list(msg.members), now):
            self._emit(e)
        self.ms.heard_from(msg.sender, now)
        if self.on_merge:
            r = self.on_merge()
            if r is not None:
                await r

    async def _send(self, addr: str, type_: str, target: str = "",
                    timeout: float | None = None) -> Message | None:
        data = self._msg(type_, target, full=type_ == "sync")
        self.counters["sent"] += len(data)
        try:
            reply = await self.transport.request(addr, data,
                                                 timeout or max(1.0, 5 * self.interval))
            msg = decode(reply)
        except MessageError:
            self.counters["malformed"] += 1
            return None
        except PeerError:
            self.counters["failed_requests"] += 1
            return None
        self.counters["received"] += len(reply)
        await self._absorb(msg)
        return msg

    def _emit(self, e: Event) -> None:
        if e.kind != "error":
            self._enqueue(e.name)
        if self.on_event:
            self.on_event(e)

    async def _run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a round must never kill the agent
                self._emit(Event("error", self.ms.me.name, f"gossip round: {e}"))
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    async def round(self) -> None:
        self.refresh()
        self._rounds += 1
        now = self.clock()
        for e in self.ms.expire(now, self.interval):
            self._emit(e)
        # fanout - 1 gossip messages carrying recent changes; the probe makes the fanout-th
        syncs = [self._send(m.addr, "ping") for m in self.ms.gossip_targets(self.fanout - 1)]
        if self._rounds % self.sync_every == 0:  # anti-entropy: full digest with one peer
            syncs += [self._send(m.addr, "sync") for m in self.ms.gossip_targets(1)]
        if not any(m.state == "alive" for m in self.ms.members.values()):
            syncs += [self._send(a, "sync") for a in self._seeds]
        dead = [m for m in self.ms.members.values() if m.state == "dead"]
        if dead and self.ms.rng.random() < 0.2:
            # Reconnect: a healed partition or a restarted node refutes our verdict.
            syncs.append(self._send(self.ms.rng.choice(dead).addr, "sync"))
        await asyncio.gather(self._probe(), *syncs)

    async def _probe(self) -> None:
        target = self.ms.probe_target()
        if target is None:
            return
        timeout = self.ms.probe_timeout(max(0.5, 2 * self.interval))
        if await self._send(target.addr, "ping", timeout=timeout) is not None:
            self.ms.probe_ok(target.name, self.clock())
            return
        helpers = self.ms.helpers(target.name, self.indirect)
        replies = await asyncio.gather(*(self._send(h.addr, "ping-req", target.addr,
                                                    timeout=2 * timeout) for h in helpers))
        if any(r is not None and r.type == "ack" for r in replies):
            self.ms.probe_ok(target.name, self.clock())
            return
        for e in self.ms.probe_failed(target.name, self.clock()):
            self._emit(e)


def http_routes(get_latent: Callable[[], LatentSpore | None]) -> list[web.RouteDef]:
    async def msg(request: web.Request) -> web.Response:
        latent = get_latent()
        if latent is None:
            return web.json_response({"error": "gossip not running"}, status=503)
        data = await request.content.read(MAX_MSG_BYTES + 1)
        try:
            reply = await latent.handle(data)
        except MessageError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.Response(body=reply, content_type="application/json")

    return [web.post(MSG_PATH, msg)]


def _obj(v: Any) -> dict[str, Any]:
    """Meta comes from peers: anything but an object counts as nothing."""
    return v if isinstance(v, dict) else {}
