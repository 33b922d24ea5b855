"""The Latent spore's I/O shell: SWIM rounds over a transport.

`LatentSpore` is an async context manager that owns its round task. The protocol rules
live in agent/gossip/swim.py, the table in table.py, the wire format in wire.py; this
module only moves messages. Transports implement one call, `request(addr, msg, timeout)
-> reply`: `HttpTransport` (the peer client over mutual TLS, as the agent runs) and
`MemoryNetwork` (agent/gossip/memory.py: in-process, with loss and partitions, for tests
and simulations). Every inbound message is size-capped and strictly checked; a bad one is
dropped and counted, never raised into the round loop.

Who may say what (agent/trust/records.py): given a `Signer`, this node signs its own record
whenever what it says about itself changed (lazily, when a message is built); given a
`Verifier`, every record received is checked against the certificate it carries, and one
that fails is dropped and counted as forged. Over HTTP the TLS peer's certificate names the
sender: a client-only certificate cannot gossip at all, and a message's `from` must be that
certificate's node. The agent always passes both; simulations and SWIM tests pass neither.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from itertools import islice
from typing import Any, Protocol

from aiohttp import web

from agent.client import PeerClient
from agent.errors import DataError, PeerError, SignatureError, TooLargeError
from agent.gossip.member import MemberView
from agent.gossip.swim import Event, Member, Membership, Stamp, sync_period
from agent.gossip.table import Snapshot, buckets_for
from agent.gossip.wire import MAX_MSG_BYTES, Message, MessageError, decode, fit
from agent.serve import read_body
from agent.trust.pki import CertInfo
from agent.trust.records import Proof
from agent.tuning import (
    FORGED_REPORT_EVERY,
    GOSSIP_FANOUT,
    GOSSIP_INTERVAL,
    INDIRECT_PROBES,
    MAX_PIGGYBACK,
    PROBE_TIMEOUT_FLOOR,
    RECONNECT_CHANCE,
    REQUEST_TIMEOUT_FLOOR,
    RETRANSMIT_MULT,
    SEEDS_KEPT,
    SYNC_EVERY,
)

MSG_PATH = "/latent/v2/msg"  # v2: compact records, stamps and bucketed anti-entropy
NOT_MEMBER_EVENTS = ("error", "forged", "refused")  # reports, not membership changes


class SenderError(DataError):
    """A gossip message from a peer that may not send it: a client-only certificate, or a
    `from` that is not the node its certificate names."""


class Signer(Protocol):
    """Signs this node's own record (agent/trust/records.py RecordSigner)."""

    info: CertInfo

    def sign(self, name: str, addr: str, incarnation: int, signed: str,
             meta: dict[str, Any], meta_version: int) -> Proof: ...


class Verifier(Protocol):
    """The certificate that speaks for a record, or DataError (RecordVerifier)."""

    def verify(self, name: str, addr: str, incarnation: int, state: str,
               meta: dict[str, Any], meta_version: int, proof: Proof) -> CertInfo: ...


class Transport(Protocol):
    async def request(self, addr: str, data: bytes, timeout: float) -> bytes: ...


class HttpTransport:
    """POST to a peer's agent API over mutual TLS, through the node's pooled peer client
    (whose owner closes it)."""

    def __init__(self, peers: PeerClient) -> None:
        self.peers = peers

    async def request(self, addr: str, data: bytes, timeout: float) -> bytes:
        try:
            return await self.peers.post_bytes(f"https://{addr}{MSG_PATH}", data,
                                               cap=MAX_MSG_BYTES, timeout=timeout)
        except TooLargeError as e:  # counted with the malformed, as decode() would
            raise MessageError(str(e)) from e

    def reset(self) -> None:
        """Drop pooled connections, so the next request handshakes (and is checked) anew:
        a peer revoked after we connected to it must not keep a kept-alive connection."""
        self.peers.reset()


class LatentSpore:
    def __init__(self, name: str, addr: str, transport: Transport, *,
                 interval: float = GOSSIP_INTERVAL, fanout: int = GOSSIP_FANOUT,
                 indirect: int = INDIRECT_PROBES,
                 get_meta: Callable[[], dict[str, Any]] = dict,
                 on_event: Callable[[Event], None] | None = None,
                 on_merge: Callable[[], Awaitable[None] | None] | None = None,
                 incarnation: int | None = None, seed: int | None = None,
                 clock: Callable[[], float] = time.time,
                 sync_every: int = SYNC_EVERY, signer: Signer | None = None,
                 verifier: Verifier | None = None, snapshot: Snapshot | None = None) -> None:
        self.clock = clock  # a simulation passes its loop's virtual time
        inc = incarnation if incarnation is not None else int(clock() * 1000)
        # snapshot: a membership shared read-only with other simulated nodes
        self.ms = Membership(Member(name, addr, inc, meta=get_meta()), seed,
                             snapshot)
        self.sync_every = sync_every
        # a random phase, so the nodes' anti-entropy rounds do not all fall together
        self._rounds = self.ms.rng.randrange(1 << 16)
        self._again = False  # the last anti-entropy exchange left records out
        # Piggyback queue: member name -> transmissions left (SWIM's lambda * log n).
        self._pending: dict[str, int] = {}
        self.transport = transport
        self.interval = interval
        self.fanout = fanout
        self.indirect = indirect
        self.get_meta = get_meta
        self.on_event = on_event
        self.on_merge = on_merge
        self.signer, self.verifier = signer, verifier
        self._said: tuple[Any, ...] = ()  # what our current proof signed
        # forged records, refused senders: one report of each kind per FORGED_REPORT_EVERY
        self._report_at: dict[str, float] = {}
        self._unreported: dict[str, int] = {}  # kind -> how many since its last report
        self.counters = {"malformed": 0, "sent": 0, "received": 0, "failed_requests": 0,
                         "forged": 0, "refused": 0}
        self._task: asyncio.Task | None = None
        self._pushes: set[asyncio.Task] = set()  # news passed on as it arrives
        self._pushed = False  # this round passed news on already
        self._seeds: list[str] = []  # retried while we know no live member
        # meta typed once per record (and last heard-from time)
        self._views: dict[str, tuple[Member, float, MemberView]] = {}

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> LatentSpore:
        self._task = asyncio.create_task(self._run(), name=f"latent-{self.ms.me.name}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for t in [self._task, *self._pushes]:
            if t is not None:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        close = getattr(self.transport, "close", None)
        if close:
            await close()

    async def join(self, addrs: list[str]) -> int:
        """Sync with each known address; returns how many answered."""
        addrs = [a for a in dict.fromkeys(addrs) if a != self.ms.me.addr]
        self._seeds = list(dict.fromkeys(self._seeds + addrs))[-SEEDS_KEPT:]
        results = await asyncio.gather(*(self._sync(a, own=True) for a in addrs))
        return sum(r is not None for r in results)

    async def leave(self) -> None:
        self.ms.leave()
        self._enqueue(self.ms.me.name)
        await asyncio.gather(*(self._ping(m) for m in self.ms.gossip_targets(self.fanout)))

    def refresh(self) -> None:
        if self.ms.set_meta(self.get_meta()):
            self._enqueue(self.ms.me.name)

    # --- views ------------------------------------------------------------------------

    def views(self) -> list[MemberView]:
        """This node first, then every member it knows, meta typed (a record's view is
        built once and kept until gossip replaces the record)."""
        # last_seen is shown to people as wall time; the rounds run on self.clock
        # (monotonic in the agent, so a clock jump neither fires nor stalls a timeout)
        to_wall = time.time() - self.clock()
        out = [MemberView.from_member(self._own(), time.time())]
        seen = self.ms.seen
        for name, m in self.ms.members.items():
            t = seen.get(name, 0.0)
            cached = self._views.get(name)
            if cached is None or cached[0] is not m or cached[1] != t:
                view = MemberView.from_member(m, t + to_wall if t else 0.0)
                cached = self._views[name] = (m, t, view)
            out.append(cached[2])
        return out

    def members(self) -> list[dict[str, Any]]:
        """The membership table as the API serves it."""
        return [v.to_row() for v in self.views()]

    # --- messages ---------------------------------------------------------------------

    def _own(self) -> Member:
        """Our record, signed again only when what we say about ourselves changed (a new
        incarnation on refuting or leaving, new meta): never once per round."""
        me = self.ms.me
        if self.signer is None:
            return me
        said = (me.addr, me.incarnation, me.state, me.meta_version, me.meta)
        if me.proof is None or said != self._said:
            proof = self.signer.sign(me.name, me.addr, me.incarnation, me.state, me.meta,
                                     me.meta_version)
            me = self.ms.me = replace(me, proof=proof, cert=self.signer.info)
            self._said = said
        return me

    def _message(self, type_: str, to: Member | None = None, *, own: bool = False,
                 records: list[Member] | None = None, **extra: Any) -> Message:
        """A message carrying the recent changes still owed retransmissions (our own
        record among them only when it changed lately, or `own`), plus `records`; `to`:
        the receiver as we know it, stamped so it can tell whether we are behind."""
        news = self._piggyback(spend=type_ not in ("ack", "nack"))
        out = {m.name: m for m in ([self._own()] if own else []) + news}
        for m in records or ():
            out.setdefault(m.name, m)
        return Message(type_, self.ms.me.name, tuple(out.values()),
                       stamp=Stamp.of(to) if to is not None else None, **extra)

    def _piggyback(self, spend: bool = True) -> list[Member]:
        """The newest changes still owed transmissions. Only messages we start spend
        them: an ack goes to whoever chose to ask us, so news rides on it for free."""
        out = []
        me = self.ms.me.name
        for name in list(islice(reversed(self._pending), MAX_PIGGYBACK)):
            m = self._own() if name == me else self.ms.members.get(name)
            if m is not None:
                out.append(m)
            if spend:
                self._pending[name] -= 1
            if m is None or self._pending[name] <= 0:
                del self._pending[name]
        return out

    def _enqueue(self, name: str) -> None:
        n = len(self.ms.members) + 2
        self._pending.pop(name, None)  # re-queue at the newest end
        self._pending[name] = RETRANSMIT_MULT * max(1, math.ceil(math.log10(n)))

    # --- answering --------------------------------------------------------------------

    async def handle(self, data: bytes, peer: CertInfo | None = None) -> bytes:
        """Inbound message -> reply bytes. `peer`: the certificate the sender showed in
        the TLS handshake (None in memory). Raises MessageError (malformed) or SenderError
        (a peer that may not send this) for the server to answer."""
        self.counters["received"] += len(data)
        if peer is not None and peer.client_only:
            self._refuse(f"{peer.node_name} holds a client-only certificate and cannot "
                         f"gossip", peer.node_name)
        try:
            msg = decode(data)
        except MessageError:
            self.counters["malformed"] += 1
            raise
        if peer is not None and msg.sender != peer.node_name:
            self._refuse(f"the certificate of {peer.node_name!r} cannot send as "
                         f"{msg.sender!r}", peer.node_name)
        await self._absorb(msg, sender_checked=peer is not None)
        to = self.ms.members.get(msg.sender)
        own = self.ms.stale(msg.stamp)  # the sender is behind on us: our record goes back
        if msg.type == "ping-req":
            ok = await self._request(msg.target, self._message("ping"),
                                     self.ms.probe_timeout(self.interval)) is not None
            return self._message("ack" if ok else "nack", to, own=own).encode()
        if msg.type != "sync":
            return self._message("ack", to, own=own).encode()
        return self._sync_reply(msg, to, own).encode()

    def _sync_reply(self, msg: Message, to: Member | None, own: bool) -> Message:
        """Anti-entropy, answering: the same digest costs nothing more; a different one
        gets our bucket sums; a bucket request gets our records in those buckets that
        differ from what the requester sent."""
        if msg.want is not None:
            nb, ids = msg.want
            sent = {m.name: Stamp.of(m) for m in msg.members}
            self._own()  # our record, signed, if it is in a wanted bucket
            mine = [m for m in self.ms.in_buckets(nb, set(ids))
                    if sent.get(m.name) != Stamp.of(m)]
            records, more = fit(mine)
            return self._message("ack", to, own=own, records=records, more=more)
        if msg.digest is not None and msg.digest[0] != self.ms.digest():
            return self._message("ack", to, own=own,
                                 sums=tuple(self.ms.bucket_sums(msg.digest[1])))
        return self._message("ack", to, own=own)

    def _refuse(self, why: str, name: str) -> None:
        self.counters["refused"] += 1
        self._report("refused", name, why)
        raise SenderError(why)

    def _verified(self, records: tuple[Member, ...]) -> list[Member]:
        """The records their own node signed (each with the certificate that speaks for
        it); the others are dropped and counted as forged."""
        if self.verifier is None:
            return list(records)
        out = []
        for r in records:
            try:
                if r.proof is None:
                    raise SignatureError(f"record of {r.name!r} is not signed")
                info = self.verifier.verify(r.name, r.addr, r.incarnation, r.state, r.meta,
                                            r.meta_version, r.proof)
            except (DataError, ValueError) as e:  # ValueError: meta that cannot be encoded
                self.counters["forged"] += 1
                self._report("forged", r.name, str(e))
                continue
            out.append(replace(r, cert=info))
        return out

    def _report(self, kind: str, name: str, why: str) -> None:
        """One event of each kind per FORGED_REPORT_EVERY seconds, however many arrive."""
        n = self._unreported[kind] = self._unreported.get(kind, 0) + 1
        now = self.clock()
        if now < self._report_at.get(kind, -math.inf):
            return
        self._unreported[kind] = 0
        self._report_at[kind] = now + FORGED_REPORT_EVERY
        self._emit(Event(kind, name, why + (f" ({n} since the last report)" if n > 1 else "")))

    async def _absorb(self, msg: Message, sender_checked: bool = False) -> None:
        now = self.clock()
        records = self._verified(msg.members)
        events = self.ms.merge(records, now)
        if msg.stamp is not None:  # the sender believes us suspect: refute at once
            events += self.ms.rumour(msg.stamp)
        for e in events:
            self._emit(e)
        if events and not self._pushed and self._task is not None:
            # news is passed on at once, not at the next round (once a round at most):
            # each hop then costs a network delay rather than half a round
            self._pushed = True
            task = asyncio.create_task(self._push())
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)
        # The sender is heard from when TLS named it (sender_checked), or, with a
        # verifier and no TLS (tests), when the message carries its own signed record.
        if (self.verifier is None or sender_checked
                or any(r.name == msg.sender for r in records)):
            self.ms.heard_from(msg.sender, now)
        if self.on_merge:
            r = self.on_merge()
            if r is not None:
                await r

    # --- asking -----------------------------------------------------------------------

    async def _request(self, addr: str, msg: Message,
                       timeout: float | None = None) -> Message | None:
        data = msg.encode()
        self.counters["sent"] += len(data)
        try:
            reply = await self.transport.request(addr, data,
                                                 timeout or max(REQUEST_TIMEOUT_FLOOR,
                                                                5 * self.interval))
            answer = decode(reply)
        except MessageError:
            self.counters["malformed"] += 1
            return None
        except PeerError:
            self.counters["failed_requests"] += 1
            return None
        self.counters["received"] += len(reply)
        await self._absorb(answer)
        if self.ms.stale(answer.stamp) and not any(m.name == self.ms.me.name
                                                   for m in msg.members):
            # it is behind on us: one more message brings it our record
            await self._request(addr, self._message("ping", own=True), timeout)
        return answer

    async def _ping(self, to: Member, timeout: float | None = None) -> Message | None:
        return await self._request(to.addr, self._message("ping", to), timeout)

    async def _push(self) -> None:
        await asyncio.gather(*(self._ping(m) for m in self.ms.gossip_targets(self.fanout - 1)))

    async def _sync(self, addr: str, to: Member | None = None,
                    own: bool = False) -> Message | None:
        """Anti-entropy, asking: our digest first (with our own record when joining or
        announcing: `own`); only when the digests differ, the bucket sums; then the
        records of differing buckets both ways. Nothing that is the same on both sides
        crosses the wire."""
        nb = buckets_for(len(self.ms.members) + 1)
        reply = await self._request(addr, self._message("sync", to, own=own,
                                                        digest=(self.ms.digest(), nb)))
        if reply is None or reply.sums is None or len(reply.sums) != nb:
            return reply
        mine = self.ms.bucket_sums(nb)
        wanted = {i for i, (a, b) in enumerate(zip(mine, reply.sums, strict=True)) if a != b}
        if not wanted:
            return reply
        self._own()  # our record, signed, if it is in a wanted bucket
        records, more = fit(self.ms.in_buckets(nb, wanted))
        last = await self._request(addr, self._message("sync", to, records=records,
                                                       want=(nb, tuple(sorted(wanted)))))
        if more or (last is not None and last.more):
            self._again = True  # the rest at the next round
        return last or reply

    def _emit(self, e: Event) -> None:
        if e.kind not in NOT_MEMBER_EVENTS:
            self._enqueue(e.name)
        if self.on_event:
            self.on_event(e)

    # --- rounds -----------------------------------------------------------------------

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
        """One probe; gossip only when there is news; anti-entropy with one peer every
        sync_period rounds (longer as the network grows). Nothing here scans the table."""
        self.refresh()
        self._rounds += 1
        self._pushed = False
        for e in self.ms.expire(self.clock(), self.interval):
            self._emit(e)
        tasks = []
        if self._pending:  # fanout - 1 gossip messages; the probe makes the fanout-th
            tasks += [self._ping(m) for m in self.ms.gossip_targets(self.fanout - 1)]
        if self._again or self._rounds % sync_period(self.sync_every,
                                                     len(self.ms.members) + 1) == 0:
            self._again = False
            tasks += [self._sync(m.addr, m) for m in self.ms.gossip_targets(1)]
        if not self.ms.any_live():
            tasks += [self._sync(a, own=True) for a in self._seeds]
        if self.ms.members.dead and self.ms.rng.random() < RECONNECT_CHANCE:
            # Reconnect: a healed partition or a restarted node refutes our verdict.
            dead = self.ms.a_dead_member()
            if dead is not None:
                tasks.append(self._sync(dead.addr, dead))
        await asyncio.gather(self._probe(), *tasks)

    async def _probe(self) -> None:
        target = self.ms.probe_target()
        if target is None:
            return
        timeout = self.ms.probe_timeout(max(PROBE_TIMEOUT_FLOOR, 2 * self.interval))
        if await self._ping(target, timeout) is not None:
            self.ms.probe_ok(target.name, self.clock())
            return
        # k helpers ping it for us, and we try once more ourselves alongside them (as
        # memberlist's TCP fallback does): one lost datagram should not make a suspect
        helpers = self.ms.helpers(target.name, self.indirect)
        replies = await asyncio.gather(self._ping(target, 2 * timeout), *(
            self._request(h.addr, self._message("ping-req", h, target=target.addr),
                          2 * timeout) for h in helpers))
        if any(r is not None and r.type == "ack" for r in replies):
            self.ms.probe_ok(target.name, self.clock())
            return
        answered = any(r is not None for r in replies[1:])  # a helper's nack
        for e in self.ms.probe_failed(target.name, self.clock(), answered):
            self._emit(e)


def http_routes(get_latent: Callable[[], LatentSpore | None]) -> list[web.RouteDef]:
    async def msg(request: web.Request) -> web.Response:
        latent = get_latent()
        if latent is None:
            return web.json_response({"error": "gossip not running"}, status=503)
        peer = request.get("peer")  # set by the revocation middleware (agent/node)
        if not isinstance(peer, CertInfo):
            return web.json_response({"error": "no checked peer certificate"}, status=403)
        data = await read_body(request, MAX_MSG_BYTES)
        try:
            reply = await latent.handle(data, peer=peer)
        except SenderError as e:
            return web.json_response({"error": str(e)}, status=403)
        except MessageError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.Response(body=reply, content_type="application/json")

    return [web.post(MSG_PATH, msg)]

