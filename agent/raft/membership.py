"""Which Raft membership change the leader makes next: pure, one change at a time.

Order of business:
1. A node that runs its Raft side but is not a member yet (a dedicated sclerotium coming
   up, or a rhizomorph the leader promoted) is added.
2. A node that runs its Raft side but should not (a demoted dynamic sclerotium that missed
   being told) is told to stop.
3. A dynamic member dead for longer than the grace period is removed from the membership
   (it cannot be told; if it comes back, rule 2 stops its Raft side). Dead members still
   count towards the majority, so without this every replacement would make the quorum
   harder to reach. Dedicated sclerotia are never removed: they are expected back.
4. Fewer live members than the target: promote the healthiest live rhizomorph.
5. More live members than the target: demote a live dynamic sclerotium (never the leader).
A promotion counts as a live member from the moment it is recorded, so the leader does not
promote a second node while the first is still starting its Raft side.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.tuning import RAFT_REMOVE_AFTER


@dataclass(frozen=True)
class Peer:
    """One node as the leader sees it through gossip and the Primary's registry."""

    name: str
    role: str  # from its certificate: sclerotium | rhizomorph | hypha
    alive: bool
    raft: str = ""  # the Raft address it advertises ("" when its Raft side is off)
    healthy: bool = True  # its last apply did not fail
    dynamic: bool = False  # recorded in the Primary as a promoted rhizomorph
    dead_for: float = 0.0  # seconds since gossip last saw it alive (0 when alive)


@dataclass(frozen=True)
class Change:
    kind: str  # add | stop | remove | promote | demote
    name: str
    raft: str = ""


def raft_addr(listen: str) -> str:
    """Raft listens two ports above the agent (the API on P, enrolment on P+1)."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 2}"


def next_change(peers: list[Peer], members: list[str], leader_raft: str,
                target: int, remove_after: float = RAFT_REMOVE_AFTER) -> Change | None:
    """`members`: the Raft members' addresses (the leader's included)."""
    mset = set(members)
    for p in peers:
        if p.alive and p.raft and p.raft not in mset:
            if p.role == "sclerotium" or p.dynamic:
                return Change("add", p.name, p.raft)
            return Change("stop", p.name, p.raft)
    by_raft = {p.raft: p for p in peers if p.raft}
    for m in members:
        p = by_raft.get(m)
        if p and p.dynamic and not p.alive and p.dead_for > remove_after and m != leader_raft:
            return Change("remove", p.name, m)
    live = [m for m in members if m == leader_raft or (m in by_raft and by_raft[m].alive)]
    pending = [p for p in peers if p.dynamic and p.alive and p.raft not in mset]
    count = len(live) + len(pending)
    if count < target:
        cands = sorted((p for p in peers if p.alive and p.role == "rhizomorph"
                        and not p.dynamic and not p.raft),
                       key=lambda p: (not p.healthy, p.name))
        if cands:
            return Change("promote", cands[0].name)
    if count > target:
        dyn = sorted((by_raft[m] for m in live if m != leader_raft and by_raft[m].dynamic),
                     key=lambda p: p.name, reverse=True)
        if dyn:
            return Change("demote", dyn[0].name, dyn[0].raft)
    return None
