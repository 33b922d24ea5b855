"""Placement: which node runs what, as a pure function of the state and live members.

Decided by the Raft leader only, committed to the Primary spore, recomputed when members
die or join. Rules:
- K3s: live sclerotia are servers; other live non-hypha nodes with runtime k3s are agents
  pointed at the first server. K3s schedules endomycete pods itself, so their manifests
  go to the servers; podman-runtime nodes get replicas assigned here.
- Podman replicas and endophytes (primary + backups) go to nodes matching the service's
  labels, never two of one service on the same node (anti-affinity), least loaded first.
- Stable: an assignment that is still valid is kept, so a failure moves only what it must.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.desired import DesiredState, NodeShare


@dataclass(frozen=True)
class LiveMember:
    name: str
    role: str
    host: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str = "k3s"


Placement = dict[str, NodeShare]


def live_members(state: DesiredState, seen: dict[str, tuple[str, str]]) -> list[LiveMember]:
    """Members to place on: nodes of the state seen alive, as name -> (role, host).
    Labels and runtime come from the state; an empty role falls back to the state's."""
    return [LiveMember(n.name, seen[n.name][0] or n.role, seen[n.name][1], n.labels,
                       n.runtime) for n in state.nodes if n.name in seen]


def _matches(m: LiveMember, selector: dict[str, str]) -> bool:
    return all(m.labels.get(k) == v for k, v in selector.items())


def _pick(cands: list[LiveMember], keep: list[str], count: int,
          load: dict[str, int]) -> list[str]:
    names = {c.name for c in cands}
    chosen = [n for n in dict.fromkeys(keep) if n in names][:count]
    rest = sorted((c for c in cands if c.name not in chosen),
                  key=lambda c: (load[c.name], c.name))
    chosen += [c.name for c in rest[: count - len(chosen)]]
    for n in chosen:
        load[n] += 1
    return chosen


def place(state: DesiredState, live: list[LiveMember],
          previous: Placement | None = None, version: int = 1) -> Placement:
    previous = previous or {}
    workers = [m for m in live if m.role != "hypha"]
    load = {m.name: 0 for m in live}
    servers = sorted(m.name for m in live if m.role == "sclerotium")
    server_url = ""
    if servers:
        first = next(m for m in live if m.name == servers[0])
        server_url = f"https://{first.host or first.name}:6443"
    endos: dict[str, list[str]] = {m.name: [] for m in live}
    for svc in state.endomycetes:
        cands = [m for m in workers if m.runtime == "podman" and _matches(m, svc.labels)]
        keep = [n for n, s in previous.items() if svc.name in s.endomycetes]
        for n in _pick(cands, keep, svc.replicas, load):
            endos[n].append(svc.name)
    prim: dict[str, list[str]] = {m.name: [] for m in live}
    back: dict[str, list[str]] = {m.name: [] for m in live}
    for vm in state.endophytes:
        cands = [m for m in workers if _matches(m, vm.labels)]
        keep_p = [n for n, s in previous.items() if vm.name in s.endophytes_primary]
        keep_b = [n for n, s in previous.items() if vm.name in s.endophytes_backup]
        # a surviving backup is promoted before anyone else: it holds the memory
        chosen = _pick(cands, keep_p + keep_b, 1 + vm.backups, load)
        if chosen:
            prim[chosen[0]].append(vm.name)
            for n in chosen[1:]:
                back[n].append(vm.name)
    shares = {}
    for m in live:
        role = None
        if m.role == "sclerotium" and m.runtime == "k3s":
            role = "server"
        elif m.role != "hypha" and m.runtime == "k3s":
            role = "agent"
        shares[m.name] = NodeShare(m.name, role, server_url if role == "agent" else "",
                                   tuple(endos[m.name]), tuple(prim[m.name]),
                                   tuple(back[m.name]), version)
    return shares
