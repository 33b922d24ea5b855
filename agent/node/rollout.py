"""The Raft leader drives a staged rollout; every node reads how far it has come.

The rules are agent/desired/rollout.py (pure). Here: the leader, while it holds a quorum,
starts a rollout when the state names a release under a `rollout:` policy and steps it
each tick from what gossip says of the nodes (alive, the release they run, apply status,
releases their watchdog rolled back); every change is committed to the Primary spore
(`put_rollout`, a higher `seq` only), so a new leader continues from the recorded wave.
Every node holding a replica gossips the progress it holds; others take the highest `seq`
for the release they are asked to run. The operator's pause, resume and abort are
committed the same way, from any sclerotium.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from agent.desired.model import DesiredState
from agent.desired.rollout import NodeView, Progress, act, allowed, may_take, start, step
from agent.gossip.member import MemberView
from agent.node.events import EventLog
from agent.raft.store import PrimarySpore

log = logging.getLogger("mycelium")


class RolloutHost(Protocol):
    @property
    def events(self) -> EventLog: ...
    @property
    def state(self) -> DesiredState | None: ...

    def members(self) -> list[MemberView]: ...
    def refresh_meta(self) -> None: ...

    def primary_store(self) -> PrimarySpore | None:
        """The local Raft replica, or None where no Raft side runs."""


def node_views(members: list[MemberView]) -> dict[str, NodeView]:
    """The nodes a rollout covers (not hyphae), as gossip shows them."""
    return {m.name: NodeView(m.name, m.alive, m.meta.release.running,
                             m.meta.apply_status not in ("failed", "degraded"),
                             m.meta.release.bad, m.meta.release.fixed)
            for m in members if m.meta.role != "hypha"}


def progress_seen(members: list[MemberView], local: dict[str, Any] | None,
                  sha256: str) -> Progress | None:
    """The newest progress for release `sha256`: the local replica's, or the highest seq
    a sclerotium gossips. Only sclerotia hold the Primary spore, and gossip takes a
    member's role from its certificate: a compromised rhizomorph or hypha cannot move a
    node into a wave."""
    found = [Progress.from_dict(local)] if local else []
    found += [Progress.from_dict(m.meta.release.rollout) for m in members
              if m.meta.release.rollout and m.meta.role == "sclerotium"]
    mine = [p for p in found if p is not None and p.sha256 == sha256]
    return max(mine, key=lambda p: p.seq) if mine else None


async def commit_action(primary: PrimarySpore | None, progress: Callable[[], Progress | None],
                        action: str, slot: dict[str, Any], missing: str) -> Progress:
    """The operator's pause | resume | abort of the progress `progress()` reads, committed
    to the Primary (in `slot`). LookupError without a replica or a progress (`missing`),
    ValueError when the action does not apply or the progress moved meanwhile."""
    if primary is None:
        raise LookupError("no Raft replica here; ask a sclerotium")
    cur = progress()
    if cur is None:
        raise LookupError(missing)
    new = act(cur, action, time.time())
    if not await primary.put_rollout({**new.to_dict(), **slot}):
        raise ValueError("the rollout moved meanwhile; try again")
    return new


class RolloutDriver:
    def __init__(self, host: RolloutHost) -> None:
        self.host = host
        self._seen_seq = 0

    def local(self) -> dict[str, Any] | None:
        primary = self.host.primary_store()
        return primary.read().get("rollout") or None if primary is not None else None

    def progress(self) -> Progress | None:
        state = self.host.state
        if state is None or state.release is None:
            return None
        return progress_seen(self.host.members(), self.local(), state.release.sha256)

    def may_take(self, name: str, sha256: str) -> bool:
        state = self.host.state
        policy = state.rollout if state is not None else None
        return may_take(self.progress(), policy, name, sha256)

    async def tick(self, now: float | None = None) -> None:
        """On the leader with a quorum: start or step the rollout. On every replica:
        gossip the progress it holds when it changed."""
        primary = self.host.primary_store()
        if primary is None:
            return
        local = Progress.from_dict(primary.read().get("rollout"))
        if local is not None and local.seq != self._seen_seq:
            self._seen_seq = local.seq
            self.host.refresh_meta()
        state = self.host.state
        if (state is None or state.release is None or state.rollout is None
                or not (primary.is_leader() and primary.has_quorum())):
            return
        now = time.time() if now is None else now
        views = node_views(self.host.members())
        if local is None or local.sha256 != state.release.sha256:
            new = start(state.release, list(views.values()), now)
            if local is not None:
                new = Progress(**{**asdict(new), "seq": local.seq + 1})
        else:
            new = step(local, state.rollout, views, now)
        if new != local and await primary.put_rollout(new.to_dict()):
            self._note(local, new, state)

    def _note(self, old: Progress | None, new: Progress, state: DesiredState) -> None:
        assert state.rollout is not None
        if old is None or old.sha256 != new.sha256:
            self.host.events.add("rollout", f"rollout of release {new.version} started: wave 1 "
                                 f"is {', '.join(allowed(new, state.rollout))}")
        elif new.status != old.status:
            self.host.events.add("rollout", f"rollout of release {new.version} {new.status}"
                                 + (f": {new.reason}" if new.reason else ""))
        elif new.wave != old.wave:
            self.host.events.add("rollout", f"rollout of release {new.version}: wave "
                                 f"{new.wave + 1} is {', '.join(allowed(new, state.rollout))}")

    async def act(self, action: str) -> Progress:
        """The operator's pause | resume | abort, committed to the Primary. LookupError
        without a replica or a rollout, ValueError when the action does not apply."""
        new = await commit_action(self.host.primary_store(), self.progress, action, {},
                                  "no rollout of the release network.yaml names is recorded")
        self.host.events.add("rollout", f"rollout of release {new.version}: {action} by the "
                             "operator")
        return new

    def view(self) -> dict[str, Any]:
        """GET /api/v1/rollout: the policy, the progress, and each node's release."""
        state = self.host.state
        p = self.progress()
        policy = state.rollout if state is not None else None
        return {"release": asdict(state.release) if state and state.release else None,
                "policy": asdict(policy) if policy else None,
                "progress": p.to_dict() if p else None,
                "allowed": list(allowed(p, policy)) if p and policy else [],
                "nodes": {m.name: m.meta.release.to_wire() | {"state": m.state}
                          for m in self.host.members() if m.meta.role != "hypha"}}
