"""The Raft side of a sclerotium, inside the agent: the Primary spore's life and the
leader's duties.

Every node holding the Raft secret runs one. It starts its PrimaryStore with the members it
last saw (`sclerotium/raft-members.json`), or, on first start, with the members the leader
advertises in gossip; the leader then adds it (pysyncobj drops connections from addresses
that are not members, so a joiner cannot disturb the cluster before that). Each tick:

- states flow both ways: a higher version committed in the Primary is accepted through
  the agent's trust checks; a higher version the agent holds is proposed to the Primary;
- the leader registers members, makes the next membership change (agent/sclerotia.py),
  commits the placement (agent/placement.py) when it changes, and republishes the seed
  spore where it is writable when the state or the sclerotia change.
A minority (no leader reachable) commits nothing: its nodes keep their last placement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import aiohttp

from agent.errors import DataError, MyceliumError
from agent.primary import PrimarySpore, PrimaryStore
from agent.sclerotia import Change, Peer, next_change, raft_addr
from agent.serial import dump_json
from agent.statefile import atomic_write

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger("mycelium")
PROPOSE_EVERY = 2.0  # seconds between proposals of the same version
PUBLISH_EVERY = 5.0  # seconds between seed publish attempts that failed


class Backbone:
    def __init__(self, agent: Agent, interval: float = 0.2) -> None:
        self.agent = agent
        self.node = agent.node
        self.raft = raft_addr(agent.identity.listen)
        self.bind = raft_addr(agent.listen)
        self.interval = interval
        self.store: PrimaryStore | None = None
        self.primary: PrimarySpore | None = None
        self._task: asyncio.Task | None = None
        self._change: asyncio.Task | None = None
        self._proposed = (0, 0.0)
        self._published: tuple[Any, ...] = ()
        self._publish_at = 0.0
        self._dead_since: dict[str, float] = {}  # this leader's view: name -> first seen dead

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
            for f in (self.node.raft_secret, self.node.raft_members):
                f.unlink(missing_ok=True)
            shutil.rmtree(self.node.raft_dir, ignore_errors=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad tick must not end the backbone
                log.exception("backbone tick failed")
            await asyncio.sleep(self.interval)

    def _start_store(self, others: list[str]) -> None:
        others = [o for o in others if o != self.raft]
        self.store = PrimaryStore(self.raft, others,
                                  self.node.raft_secret.read_bytes().strip(),
                                  self.node.raft_dir, bind=self.bind)
        self.primary = PrimarySpore(self.store)
        self.agent.events.add("raft", f"Raft side started at {self.raft} with "
                              f"{len(others)} other member(s)")

    def _initial_members(self) -> list[str] | None:
        """The members to start with: saved ones, else the leader's as gossip shows them."""
        f = self.node.raft_members
        if f.exists():
            try:
                saved = json.loads(f.read_text())
                if isinstance(saved, list) and all(isinstance(a, str) for a in saved):
                    return saved
            except ValueError:
                pass
        for m in self.agent.members():
            raft = m.get("raft") or {}
            if m.get("state") == "alive" and raft.get("leader") and raft.get("members"):
                return [a for a in raft["members"] if isinstance(a, str)]
        return None

    # --- the tick ---------------------------------------------------------------------

    async def tick(self) -> None:
        if self.store is None:
            others = self._initial_members()
            if others is None:
                return  # no leader visible yet: wait for gossip
            self._start_store(others)
        assert self.primary is not None and self.store is not None
        members = self.store.raft_members()
        if self.raft in members and members != self._saved_members():
            atomic_write(self.node.raft_members, dump_json(members), 0o600)
        await self._sync_state()
        view = self.primary.read()
        self.agent.on_primary(view["placement_version"], view["placement"])
        if self.agent.decision().may_place:  # the Raft leader, with a majority
            await self._lead(members)
        if self.agent.latent is not None:
            self.agent.latent.refresh()

    def _saved_members(self) -> list[str] | None:
        try:
            return json.loads(self.node.raft_members.read_text())
        except (OSError, ValueError):
            return None

    def meta(self) -> dict[str, Any]:
        """What gossip carries about this node's Raft side."""
        if self.store is None or self.primary is None:
            return {}
        leader = self.primary.is_leader()
        return {"addr": self.raft, "leader": leader, "pv": self.store.placement_version,
                **({"members": self.store.raft_members()} if leader else {})}

    async def _sync_state(self) -> None:
        assert self.store is not None and self.primary is not None
        agent, st = self.agent, self.store
        if st.version > agent.held_version and st.envelope:
            try:
                await agent.accept_envelope(st.envelope, "primary spore")
            except DataError as e:
                log.warning("state v%s in the Primary refused: %s", st.version, e)
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
                                 self.agent.opts.raft_remove_after)
            if change is not None:
                self._change = asyncio.create_task(self._make(change))
        await self._place()
        await self._republish(members)

    def _peers(self) -> list[Peer]:
        assert self.store is not None
        dynamic = self.store.dynamic
        now = time.monotonic()
        out = []
        for m in self.agent.members():
            if m["name"] == self.agent.identity.name:
                continue
            raft = m.get("raft") or {}
            status = (m.get("status") or {}).get("status")
            alive = m.get("state") == "alive"
            if alive:
                self._dead_since.pop(m["name"], None)
            since = self._dead_since.setdefault(m["name"], now) if not alive else now
            out.append(Peer(m["name"], m.get("role") or "", alive,
                            raft.get("addr") or dynamic.get(m["name"], ""),
                            status != "failed", m["name"] in dynamic, now - since))
        # A promoted node gossip has forgotten altogether is dead too (its Raft address is
        # in the Primary's record of promotions).
        seen = {p.name for p in out} | {self.agent.identity.name}
        for name, addr in dynamic.items():
            if name not in seen:
                since = self._dead_since.setdefault(name, now)
                out.append(Peer(name, "rhizomorph", False, addr, dynamic=True,
                                dead_for=now - since))
        return out

    async def _make(self, change: Change) -> None:
        assert self.primary is not None
        p = self.primary
        addr = next((m["addr"] for m in self.agent.members() if m["name"] == change.name), "")
        try:
            if change.kind == "add":
                await p.add_member(change.raft)
            elif change.kind == "promote":
                await p.set_dynamic(change.name, raft_addr(addr))
                await self._tell(addr, "promote",
                                 {"secret": self.node.raft_secret.read_text().strip()})
            elif change.kind == "demote":
                await p.remove_member(change.raft)
                await p.set_dynamic(change.name, None)
                await self._tell(addr, "demote", {})
            elif change.kind == "stop":
                await self._tell(addr, "demote", {})
            elif change.kind == "remove":
                await p.remove_member(change.raft)
                await p.set_dynamic(change.name, None)
            self.agent.events.add("raft", f"{change.kind} {change.name}")
        except (MyceliumError, TimeoutError, aiohttp.ClientError, ssl.SSLError) as e:
            self.agent.events.add("raft", f"{change.kind} {change.name} failed: {e}")
            await asyncio.sleep(1.0)  # the next tick decides again

    async def _tell(self, addr: str, what: str, body: dict[str, Any]) -> None:
        url = f"https://{addr}/api/v1/primary/{what}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.post(url, json=body, ssl=self.agent.peer_ssl) as r:
                if r.status != 200:
                    raise DataError(f"{addr} answered {what} with HTTP {r.status}")

    async def _register(self) -> None:
        assert self.store is not None and self.primary is not None
        held = self.store.members
        for m in self.agent.members():
            if m.get("state") != "alive":
                continue
            entry = {"fingerprint": m.get("fp") or "", "role": m.get("role") or "",
                     "addresses": [m["addr"]]}
            if held.get(m["name"]) != entry:
                await self.primary.register(m["name"], entry["fingerprint"], entry["role"],
                                            entry["addresses"])
                return  # one per tick: registration is not urgent

    async def _place(self) -> None:
        from agent.placement import place

        assert self.store is not None and self.primary is not None
        agent, st = self.agent, self.store
        if agent.state is None:
            return
        previous = shares_from_dict(st.placement)
        version = st.placement_version + 1
        new = place(agent.state, agent.live(), previous, version=version)
        if _strip(new) != _strip(previous):
            shares = {n: asdict(s) for n, s in new.items()}
            await self.primary.put_placement(version, {"state_version": agent.held_version,
                                                       "shares": shares})

    async def _republish(self, members: list[str]) -> None:
        """Leader: write the seed spore where it is writable, when the state or the set of
        sclerotia changed. Only a leader whose certificate says sclerotium can sign one."""
        agent = self.agent
        state = agent.state
        if state is None or not state.spores.seed.locations or agent.identity.role != \
                "sclerotium" or time.monotonic() < self._publish_at:
            return
        by_raft = {(m.get("raft") or {}).get("addr"): m["addr"] for m in agent.members()}
        boot = sorted(by_raft[r] for r in members if r in by_raft)
        key = (agent.held_version, tuple(boot), state.spores.seed.locations)
        if key == self._published:
            return
        from agent.seed import republish

        try:
            version = await republish(self.node, list(state.spores.seed.locations), boot)
            self._published = key
            agent.events.add("seed", f"seed spore v{version} published to "
                             f"{len(state.spores.seed.locations)} location(s)")
        except MyceliumError as e:
            self._publish_at = time.monotonic() + PUBLISH_EVERY
            agent.events.add("seed", f"seed spore not published: {e}")


def shares_from_dict(placement: dict[str, Any]) -> dict[str, Any]:
    from agent.desired import NodeShare

    out = {}
    for name, d in (placement.get("shares") or {}).items():
        out[name] = NodeShare(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in d.items()})
    return out


def _strip(p: dict[str, Any]) -> dict[str, Any]:
    """A placement without its version stamp: what changed is the assignment."""
    return {n: {**asdict(s), "placement_version": 0} for n, s in p.items()}
