"""What a node concludes from its membership table: pure functions, table-tested.

The daemon and the backbone are I/O shells around these. Each takes the typed member rows
(agent/gossip/member.py) as gossip shows them now, and returns a view or a choice:
- the authority views (agent/desired/authority.py) a node builds when it has no Raft
  replica of its own: the Primary as sclerotia gossip it, and the Latent view;
- which peer to pull a newer state from, and which sclerotium to ask for a newer
  committed placement;
- the peer list a Raft leader computes the next membership change from
  (agent/raft/membership.py), including promoted members gossip has forgotten;
- the Raft members a joining sclerotium starts with, the bootstrap addresses a leader
  publishes, and the members a placement is computed over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.desired.authority import LatentView, PrimaryView
from agent.desired.model import NodeShare
from agent.gossip.member import MemberView
from agent.raft.membership import Peer


def gossip_primary(members: Iterable[MemberView], registry: tuple[str, ...]) -> PrimaryView:
    """The Primary as the live sclerotia gossip it (for a node without a Raft replica):
    reachable when one is alive, with a majority when one of them leads; `registry` is the
    member list last fetched from a sclerotium."""
    rafts = [m for m in members if m.alive and m.meta.raft.addr]
    return PrimaryView(bool(rafts), False, any(m.meta.raft.leader for m in rafts),
                       max((m.meta.version for m in rafts), default=0), registry,
                       max((m.meta.raft.pv for m in rafts), default=0))


def latent_view(members: Iterable[MemberView]) -> LatentView:
    alive = [m for m in members if m.alive]
    return LatentView(max((m.meta.version for m in alive), default=0),
                      tuple(sorted(m.name for m in alive)))


def pull_state_from(peers: Iterable[MemberView], held_version: int) -> MemberView | None:
    """The live peer with the highest state version, if it is newer than ours."""
    best = max((m for m in peers if m.alive), key=lambda m: m.meta.version, default=None)
    return best if best is not None and best.meta.version > held_version else None


def pull_placement_from(peers: Iterable[MemberView], placement_version: int) \
        -> MemberView | None:
    """The live sclerotium acting on the newest placement, if newer than ours."""
    best = max((m for m in peers if m.alive and m.meta.raft.addr),
               key=lambda m: m.meta.pv, default=None)
    return best if best is not None and best.meta.pv > placement_version else None


def sclerotium_in_reach(members: Iterable[MemberView]) -> bool:
    return any(m.alive and m.meta.raft.addr for m in members)


def raft_peers(members: Iterable[MemberView], me: str, dynamic: Mapping[str, str],
               dead_since: Mapping[str, float], now: float) \
        -> tuple[list[Peer], dict[str, float]]:
    """Every other node as the Raft leader judges it, and the updated record of when each
    was first seen dead (`dynamic`: promoted name -> Raft address, from the Primary)."""
    since_dead = dict(dead_since)
    out = []
    for m in members:
        if m.name == me:
            continue
        if m.alive:
            since_dead.pop(m.name, None)
        since = since_dead.setdefault(m.name, now) if not m.alive else now
        out.append(Peer(m.name, m.meta.role, m.alive, m.meta.raft.addr or dynamic.get(m.name, ""),
                        m.meta.apply_status != "failed", m.name in dynamic, now - since))
    # A promoted node gossip has forgotten altogether is dead too (its Raft address is
    # in the Primary's record of promotions).
    seen = {p.name for p in out} | {me}
    for name, addr in dynamic.items():
        if name not in seen:
            since = since_dead.setdefault(name, now)
            out.append(Peer(name, "rhizomorph", False, addr, dynamic=True,
                            dead_for=now - since))
    return out, since_dead


def leader_raft_members(members: Iterable[MemberView]) -> list[str] | None:
    """The Raft members a live leader advertises (what a new sclerotium starts with)."""
    for m in members:
        if m.alive and m.meta.raft.leader and m.meta.raft.members:
            return list(m.meta.raft.members)
    return None


def seed_bootstrap(members: Iterable[MemberView], raft_members: Iterable[str]) -> list[str]:
    """The agent addresses of the Raft members gossip knows: a seed spore's bootstrap."""
    by_raft = {m.meta.raft.addr: m.addr for m in members}
    return sorted(by_raft[r] for r in raft_members if r in by_raft)


def placement_seen(members: Iterable[MemberView], name: str, role: str,
                   listen: str) -> dict[str, tuple[str, str]]:
    """name -> (role, host) of the members to place on: alive or suspect, and this node
    (named `name`) whatever gossip says of it."""
    seen = {m.name: (m.meta.role, m.host) for m in members if m.state in ("alive", "suspect")}
    seen.setdefault(name, (role, listen.rsplit(":", 1)[0]))
    return seen


def member_checkpoints(members: Iterable[MemberView]) -> dict[str, dict[str, float]]:
    """name -> {VM: when its newest checkpoint arrived} from each member's gossiped apply
    status (`ckpt`, agent/node/vm/runtime.py); malformed entries are skipped."""
    out: dict[str, dict[str, float]] = {}
    for m in members:
        ckpt = m.meta.status.get("ckpt")
        if isinstance(ckpt, dict):
            out[m.name] = {str(k): float(v) for k, v in ckpt.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
    return out


def committed_share(placement: dict[str, NodeShare], version: int, name: str,
                    role: str) -> NodeShare:
    """This node's share of a committed placement. A node the leader left out (not live in
    its view when it placed, e.g. a slow joiner) runs no workloads, but still applies the
    state's node-wide parts (users, base, agent): with no plan at all it stayed unusable."""
    return placement.get(name) or NodeShare(name, placement_version=version, role=role)


def runs_vm(members: Iterable[MemberView], node: str, vm: str) -> bool:
    """Gossip says live member `node` runs VM `vm` (its apply status `vms`)."""
    return any(m.name == node and m.alive and _vm_states(m).get(vm) == "running"
               for m in members)


def stale_copies(members: Iterable[MemberView], me: str, placement_version: int,
                 vms: Iterable[str]) -> frozenset[str]:
    """Which of `vms` (run here under placement `placement_version`) a live member acting
    on a newer placement runs too: this node's copy is the stale one. An old primary that
    comes back from a partition stops such a VM at once, before it has fetched the newer
    placement itself, so the VM never runs twice for longer than gossip takes."""
    wanted = set(vms)
    return frozenset(vm for m in members if m.name != me and m.alive
                     and m.meta.pv > placement_version
                     for vm, st in _vm_states(m).items() if vm in wanted and st == "running")


def _vm_states(m: MemberView) -> dict[str, str]:
    vms = m.meta.status.get("vms")
    return {str(k): str(v) for k, v in vms.items()} if isinstance(vms, dict) else {}
