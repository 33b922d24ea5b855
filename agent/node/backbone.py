"""The Raft side of a sclerotium, inside the agent: the Primary spore's life and the
leader's duties.

Every node holding the Raft secret runs one. It starts its PrimaryStore with the members it
last saw (`sclerotium/raft-members.json`), or, on first start, with the members the leader
advertises in gossip; the leader then adds it (pysyncobj drops connections from addresses
that are not members, so a joiner cannot disturb the cluster before that). Each tick:

- states flow both ways: a higher version committed in the Primary is accepted through
  the agent's trust checks; a higher version the agent holds is proposed to the Primary;
- the leader registers members (with their verified certificate's role and fingerprint,
  and only a certificate a peer showed this node in a TLS handshake), makes the next
  membership change (agent/raft/membership.py), commits the placement
  (agent/desired/placement.py) when it changes, and republishes the seed spore where it is
  writable when the state or the sclerotia change.
A minority (no leader reachable) commits nothing: its nodes keep their last placement.

The backbone sees its node only through `BackboneHost` (memberlist's Delegate): the held
state and the membership table to read, the trust-checked way in for a state, and where to
hand a committed placement. The choices it makes from the membership table are pure
functions in agent/node/decisions.py.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import asdict
from typing import Any, Protocol

from agent.client import PeerClient
from agent.desired.model import DesiredState
from agent.desired.placement import LiveMember
from agent.errors import DataError, MyceliumError, StorageError
from agent.gossip.member import MemberView, RaftMeta
from agent.node.datadir import NodeDir, NodeIdentity
from agent.node.decisions import leader_raft_members, raft_peers, seed_bootstrap
from agent.node.events import RAFT_DATA, STORAGE, EventLog
from agent.node.held import shares_from_dict, strip_version
from agent.node.seed import SeedLog
from agent.raft.membership import Change, Peer, next_change, raft_addr
from agent.raft.secrets import demote_proof
from agent.raft.store import PrimarySpore, PrimaryStore
from agent.trust.envelope import Envelope
from agent.tuning import (
    BACKBONE_INTERVAL,
    CHANGE_RETRY,
    PROPOSE_EVERY,
    PUBLISH_EVERY,
    RAFT_REMOVE_AFTER,
    raft_pace,
)

log = logging.getLogger("mycelium")


class BackboneHost(Protocol):
    """What the backbone needs from the node it runs in."""

    @property
    def events(self) -> EventLog: ...
    @property
    def peer_ssl(self) -> ssl.SSLContext: ...
    @property
    def state(self) -> DesiredState | None: ...
    @property
    def held_version(self) -> int: ...
    @property
    def held_sha256(self) -> str: ...
    @property
    def seed_log(self) -> SeedLog: ...

    def members(self) -> list[MemberView]: ...
    async def accept_envelope(self, data: bytes, source: str) -> Envelope: ...

    def on_primary(self, version: int, placement: dict[str, Any]) -> None:
        """A placement the Primary committed (adopted by the host if newer)."""

    def gossip_interval(self) -> float:
        """The gossip round in force (Raft's timers scale with it)."""

    def may_place(self) -> bool:
        """This node leads the Raft cluster with a majority behind it."""

    def live(self) -> list[LiveMember]:
        """The members to place on, as gossip sees them."""

    def refresh_meta(self) -> None:
        """Our Raft side changed: gossip the new `meta()` soon."""

    def seen_in_handshake(self, fp: str) -> bool:
        """A certificate with this fingerprint is ours or a peer showed it to us in TLS."""


class Backbone:
    def __init__(self, agent: BackboneHost, node: NodeDir, identity: NodeIdentity,
                 listen: str, remove_after: float = RAFT_REMOVE_AFTER,
                 interval: float = BACKBONE_INTERVAL) -> None:
        """`identity.listen` is the advertised address (Raft two ports above it), `listen`
        the bound one."""
        self.agent = agent
        self.node = node
        self.identity = identity
        self.raft = raft_addr(identity.listen)
        self.bind = raft_addr(listen)
        self.remove_after = remove_after
        self.interval = interval
        self.store: PrimaryStore | None = None
        self.primary: PrimarySpore | None = None
        self._task: asyncio.Task | None = None
        self._change: asyncio.Task | None = None
        self._proposed = (0, 0.0)
        self._published: tuple[Any, ...] = ()
        self._publish_at = 0.0
        self._dead_since: dict[str, float] = {}  # this leader's view: name -> first seen dead
        self._acting_term = -1  # the last term this node acted as leader in
        self._pace: tuple[float, float, float] | None = None  # Raft timers in force

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Backbone:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def stop(self, purge: bool = False) -> None:
        """Stop the Raft side; `purge` (demotion) forgets the secret, journal and members."""
        for t in (self._task, self._change):
            if t is not None and not t.done():
                t.cancel()
        if self.store is not None:
            store, self.store, self.primary = self.store, None, None
            await asyncio.to_thread(store.destroy)
        if purge:
            self.node.forget_raft()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except DataError as e:  # e.g. a corrupt journal: one event, no traceback
                self.agent.events.problem(RAFT_DATA, f"node {self.identity.name} cannot "
                                          f"start its Raft side: {e}")
            except TimeoutError:  # Raft too slow to commit (a loaded or lost majority)
                log.warning("backbone tick: a Raft commit timed out; retrying")
            except Exception:  # a bad tick must not end the backbone
                log.exception("backbone tick failed")
            else:
                self.agent.events.solved(RAFT_DATA)
            await asyncio.sleep(self.interval)

    def _start_store(self, others: list[str]) -> None:
        others = [o for o in others if o != self.raft]
        self.store = PrimaryStore(self.raft, others,
                                  self.node.read_raft_secret().strip(),
                                  self.node.raft_dir, bind=self.bind)
        self.primary = PrimarySpore(self.store)
        self.agent.events.add("raft", f"Raft side started at {self.raft} with "
                              f"{len(others)} other member(s)")

    def _initial_members(self) -> list[str] | None:
        """The members to start with: saved ones, else the leader's as gossip shows them."""
        saved = self.node.read_raft_members()
        return saved if saved is not None else leader_raft_members(self.agent.members())

    # --- the tick ---------------------------------------------------------------------

    async def tick(self) -> None:
        if self.store is None:
            others = self._initial_members()
            if others is None:
                return  # no leader visible yet: wait for gossip
            self._start_store(others)
        assert self.primary is not None and self.store is not None
        pace = raft_pace(self.agent.gossip_interval())
        if pace != self._pace:
            self._pace = pace
            self.store.set_pace(pace[0], pace[1:])
        members = self.store.raft_members()
        if self.raft in members and members != self.node.read_raft_members():
            try:
                self.node.write_raft_members(members)
            except StorageError as e:  # kept for a restart only: the tick goes on
                self.agent.events.problem(STORAGE, f"node {self.identity.name} cannot "
                                          f"save the Raft members: {e}")
        await self._sync_state()
        view = self.primary.read()
        self.agent.on_primary(view["placement_version"], view["placement"])
        if self.agent.may_place():  # the Raft leader, with a majority
            term = self.primary.term()
            if term != self._acting_term:  # one line per term: tests check one actor each
                self._acting_term = term
                self.agent.events.add("raft", f"acting as leader in term {term}")
            await self._lead(members)
        self.agent.refresh_meta()

    def meta(self) -> RaftMeta:
        """What gossip carries about this node's Raft side."""
        if self.store is None or self.primary is None:
            return RaftMeta()
        leader = self.primary.is_leader()
        return RaftMeta(self.raft, leader, self.store.placement_version,
                        tuple(self.store.raft_members()) if leader else None)

    def view(self) -> dict[str, Any] | None:
        """The local replica's view of the Primary (the API's /primary), or None."""
        if self.primary is None:
            return None
        return {**self.primary.read(), "quorum": self.primary.has_quorum()}

    async def _sync_state(self) -> None:
        assert self.store is not None and self.primary is not None
        agent, st = self.agent, self.store
        if st.version > agent.held_version and st.envelope:
            try:
                await agent.accept_envelope(st.envelope, "primary spore")
            except DataError as e:
                log.warning("state v%s in the Primary refused: %s", st.version, e)
            except StorageError:
                pass  # reported by accept_envelope; the next tick tries again
        elif agent.held_version > st.version and self.primary.has_quorum():
            v, at = self._proposed
            if v == agent.held_version and time.monotonic() - at < PROPOSE_EVERY:
                return
            data = self.node.store.envelope()
            if data is None:
                return
            self._proposed = (agent.held_version, time.monotonic())
            try:
                await self.primary.put_envelope(agent.held_version, agent.held_sha256, data)
            except (MyceliumError, TimeoutError) as e:
                log.info("proposing state v%s: %s", agent.held_version, e)

    # --- leader duties ----------------------------------------------------------------

    async def _lead(self, members: list[str]) -> None:
        await self._register()
        if self._change is None or self._change.done():
            state = self.agent.state
            target = state.spores.primary.target_sclerotia if state else 0
            change = next_change(self._peers(), members, self.raft, target,
                                 self.remove_after)
            if change is not None:
                self._change = asyncio.create_task(self._make(change))
        await self._place()
        await self._republish(members)

    def _peers(self) -> list[Peer]:
        assert self.store is not None
        peers, self._dead_since = raft_peers(self.agent.members(), self.identity.name,
                                             self.store.dynamic, self._dead_since,
                                             time.monotonic())
        return peers

    async def _make(self, change: Change) -> None:
        assert self.primary is not None
        p = self.primary
        addr = next((m.addr for m in self.agent.members() if m.name == change.name), "")
        try:
            if change.kind == "add":
                await p.add_member(change.raft)
            elif change.kind == "promote":
                await p.set_dynamic(change.name, raft_addr(addr))
                await self._tell(addr, "promote",
                                 {"secret": self.node.read_raft_secret().decode().strip()})
            elif change.kind == "demote":
                await p.remove_member(change.raft)
                await p.set_dynamic(change.name, None)
                await self._tell(addr, "demote", self._demote_body(change.name))
            elif change.kind == "stop":
                await self._tell(addr, "demote", self._demote_body(change.name))
            elif change.kind == "remove":
                await p.remove_member(change.raft)
                await p.set_dynamic(change.name, None)
            self.agent.events.add("raft", f"{change.kind} {change.name}")
        except (MyceliumError, TimeoutError) as e:
            why = str(e) or "timed out"  # TimeoutError says nothing itself
            self.agent.events.add("raft", f"{change.kind} {change.name} failed: {why}")
            await asyncio.sleep(CHANGE_RETRY)  # the next tick decides again

    def _demote_body(self, name: str) -> dict[str, Any]:
        return {"proof": demote_proof(self.node.read_raft_secret(), name)}

    async def _tell(self, addr: str, what: str, body: dict[str, Any]) -> None:
        url = f"https://{addr}/api/v1/primary/{what}"
        async with PeerClient(self.agent.peer_ssl) as peers:
            r = await peers.request("POST", url, json_body=body)
        if r.status != 200:
            raise DataError(f"{addr} answered {what} with HTTP {r.status}")

    async def _register(self) -> None:
        assert self.store is not None and self.primary is not None
        held = self.store.members
        for m in self.agent.members():
            # role and fingerprint are the verified certificate's (agent/gossip/member.py);
            # a certificate no peer showed us in a handshake is not registered
            if not m.alive or not m.meta.fp or not self.agent.seen_in_handshake(m.meta.fp):
                continue
            entry = {"fingerprint": m.meta.fp, "role": m.meta.role, "addresses": [m.addr]}
            if held.get(m.name) != entry:
                await self.primary.register(m.name, entry["fingerprint"], entry["role"],
                                            entry["addresses"])
                return  # one per tick: registration is not urgent

    async def _place(self) -> None:
        from agent.desired.placement import place, placement_notes

        assert self.store is not None and self.primary is not None
        agent, st = self.agent, self.store
        if agent.state is None:
            return
        previous = shares_from_dict(st.placement)
        version = st.placement_version + 1
        live = agent.live()
        new = place(agent.state, live, previous, version=version)
        if strip_version(new) != strip_version(previous):
            shares = {n: asdict(s) for n, s in new.items()}
            await self.primary.put_placement(version, {"state_version": agent.held_version,
                                                       "shares": shares})
            for line in placement_notes(agent.state, live, new):  # what could not be placed
                agent.events.add("placement", line)

    async def _republish(self, members: list[str]) -> None:
        """Leader: write the seed spore where it is writable, when the state or the set of
        sclerotia changed. Only a leader whose certificate says sclerotium can sign one."""
        agent = self.agent
        state = agent.state
        if state is None or not state.spores.seed.locations or self.identity.role != \
                "sclerotium" or time.monotonic() < self._publish_at:
            return
        boot = seed_bootstrap(agent.members(), members)
        key = (agent.held_version, tuple(boot), state.spores.seed.locations)
        if key == self._published:
            return
        from agent.node.seed import republish

        try:
            version = await republish(self.node, list(state.spores.seed.locations), boot,
                                      agent.seed_log)
            self._published = key
            agent.events.add("seed", f"seed spore v{version} published to "
                             f"{len(state.spores.seed.locations)} location(s)")
        except MyceliumError as e:
            self._publish_at = time.monotonic() + PUBLISH_EVERY
            agent.events.add("seed", f"seed spore not published: {e}")

