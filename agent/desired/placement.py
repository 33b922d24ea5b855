"""Placement: which node runs what, as a pure function of the state and live members.

Decided by the Raft leader only, committed to the Primary spore, recomputed when members
die or join. Rules:
- K3s: live sclerotia are servers; other live non-hypha nodes with runtime k3s are agents
  pointed at the first server. K3s schedules endomycete pods itself, so their manifests
  go to the servers; podman-runtime nodes get replicas assigned here.
- Podman replicas and endophytes (primary + backups) go to nodes matching the service's
  labels, never two of one service on the same node (anti-affinity), least loaded first.
- Memory: a VM goes only where its memory_mb fits in what the node has (nodes[].memory_mb)
  less the VMs already placed there, primaries and backups alike (a backup must be able
  to run the VM when it takes over). A node that does not say how much it has is not
  limited. VMs that keep their nodes are counted first, so a new VM never pushes one out.
- Stable: an assignment that is still valid is kept, so a failure moves only what it must.
- Members: every live member is placed with the role its certificate gives it; a `nodes:`
  entry of the same name only adds labels and a runtime. A node without a runtime gets
  K3s when components.k3s names a binary, podman otherwise, so a fresh network places.
What could not be placed as asked is said by `placement_notes`, one line per service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.desired.model import DesiredState, Endophyte, NodeShare, Runtime


@dataclass(frozen=True)
class LiveMember:
    name: str
    role: str
    host: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str = "k3s"
    runtime_reason: str = ""
    memory_mb: int | None = None  # what it has for VMs (nodes[].memory_mb); None: unknown


Placement = dict[str, NodeShare]


def runtime_for(state: DesiredState, name: str) -> tuple[Runtime, str]:
    """(runtime, why) of a node: its `nodes:` entry's, else K3s only when the network says
    where K3s comes from (podman needs no artifact, so a fresh network can run services)."""
    node = state.node(name)
    if node is not None and node.runtime is not None:
        return node.runtime, "nodes: entry"
    if state.components.k3s.binary:
        return "k3s", "components.k3s is set"
    return "podman", "no components.k3s"


def live_members(state: DesiredState, seen: dict[str, tuple[str, str]]) -> list[LiveMember]:
    """Members to place on: every member seen alive, as name -> (role, host). The role is
    the member's own (from its certificate); a `nodes:` entry of that name adds labels and
    a runtime, and its role is used only when the member reported none."""
    out = []
    for name in sorted(seen):
        role, host = seen[name]
        node = state.node(name)
        runtime, why = runtime_for(state, name)
        out.append(LiveMember(name, role or (node.role if node else "rhizomorph"), host,
                              dict(node.labels) if node else {}, runtime, why,
                              node.memory_mb if node else None))
    return out


def seen_members(members: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """name -> (role, host) of the members a gossip table (/api/v1/members) shows alive or
    suspect: the `seen` that live_members takes."""
    return {str(m["name"]): (str(m.get("role") or ""), str(m.get("addr") or "").rsplit(":", 1)[0])
            for m in members if m.get("state") in ("alive", "suspect") and m.get("name")}


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
    prim, back = _place_vms(state, workers, previous, load)
    shares = {}
    for m in live:
        role = None
        if m.role == "sclerotium" and m.runtime == "k3s":
            role = "server"
        elif m.role != "hypha" and m.runtime == "k3s":
            role = "agent"
        shares[m.name] = NodeShare(m.name, role, server_url if role == "agent" else "",
                                   tuple(endos[m.name]), tuple(prim.get(m.name, ())),
                                   tuple(back.get(m.name, ())), version, m.role,
                                   *((m.runtime, m.runtime_reason) if m.role != "hypha"
                                     else ("", "")))
    return shares


def _place_vms(state: DesiredState, workers: list[LiveMember], previous: Placement,
               load: dict[str, int]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Primary and backups of each endophyte: (node -> VMs it is primary for, node -> VMs
    it backs up). Kept assignments are reserved first, then the rest is filled."""
    free = {m.name: m.memory_mb for m in workers}
    hosts: dict[str, list[str]] = {}
    for vm in state.endophytes:  # first what stays: the previous primary, then backups
        names = {m.name for m in workers if _matches(m, vm.labels)}
        prev = ([n for n, s in sorted(previous.items()) if vm.name in s.endophytes_primary]
                + [n for n, s in sorted(previous.items()) if vm.name in s.endophytes_backup])
        hosts[vm.name] = []
        for n in dict.fromkeys(prev):  # a surviving backup is promoted: it holds the memory
            if n in names and len(hosts[vm.name]) < 1 + vm.backups and _fits(free, n, vm):
                _reserve(free, load, n, vm)
                hosts[vm.name].append(n)
    for vm in state.endophytes:
        chosen = hosts[vm.name]
        rest = sorted((m for m in workers if _matches(m, vm.labels) and m.name not in chosen
                       and _fits(free, m.name, vm)), key=lambda m: (load[m.name], m.name))
        for m in rest[: 1 + vm.backups - len(chosen)]:
            _reserve(free, load, m.name, vm)
            chosen.append(m.name)
    prim: dict[str, list[str]] = {m.name: [] for m in workers}
    back: dict[str, list[str]] = {m.name: [] for m in workers}
    for vm in state.endophytes:
        for i, n in enumerate(hosts[vm.name]):
            (back if i else prim)[n].append(vm.name)
    return prim, back


def _fits(free: dict[str, int | None], node: str, vm: Endophyte) -> bool:
    left = free[node]
    return left is None or left >= vm.memory_mb


def _reserve(free: dict[str, int | None], load: dict[str, int], node: str,
             vm: Endophyte) -> None:
    left = free[node]
    if left is not None:
        free[node] = left - vm.memory_mb
    load[node] += 1


def free_memory(state: DesiredState, live: list[LiveMember],
                placement: Placement) -> dict[str, int]:
    """MiB left for VMs on each node that says what it has, after `placement`'s VMs."""
    mem = {e.name: e.memory_mb for e in state.endophytes}
    out = {}
    for m in live:
        if m.memory_mb is not None and m.role != "hypha":
            s = placement.get(m.name, NodeShare(m.name))
            vms = s.endophytes_primary + s.endophytes_backup
            out[m.name] = m.memory_mb - sum(mem.get(v, 0) for v in vms)
    return out


def placement_notes(state: DesiredState, live: list[LiveMember],
                    placement: Placement) -> list[str]:
    """One line per service that `placement` does not run as `state` asks, saying why
    ("nginx: 1 of 3 replicas placed: only n1 has a container runtime"); [] when all is
    placed. Services on K3s nodes are K3s's to schedule once a K3s server is placed."""
    workers = [m for m in live if m.role != "hypha"]
    k3s_up = bool(state.components.k3s.binary) and any(
        s.k3s_role == "server" for s in placement.values())
    notes = []
    free = free_memory(state, live, placement)
    for svc in state.endomycetes:
        on = [n for n, s in placement.items() if svc.name in s.endomycetes]
        fit = [m for m in workers if _matches(m, svc.labels)]
        if len(on) >= svc.replicas or (k3s_up and any(m.runtime == "k3s" for m in fit)):
            continue
        runs = [m for m in fit if m.runtime == "podman"]
        why = _why(svc.labels, workers, fit, runs, svc.replicas)
        notes.append(f"{svc.name}: {len(on)} of {svc.replicas} replica"
                     f"{'s' if svc.replicas != 1 else ''} placed: {why}")
    for vm in state.endophytes:
        on = [n for n, s in placement.items()
              if vm.name in s.endophytes_primary + s.endophytes_backup]
        want = 1 + vm.backups
        if len(on) >= want:
            continue
        fit = [m for m in workers if _matches(m, vm.labels)]
        names = {m.name for m in fit}
        short = {n: f for n, f in free.items() if n in names and n not in on}
        roomy = sum(m.name not in on and short.get(m.name, vm.memory_mb) >= vm.memory_mb
                    for m in fit)
        if fit and len(on) + roomy < want:  # memory stopped it: how far off is the roomiest
            big = max(sorted(short), key=lambda n: short[n], default=None)
            room = f"{short[big]} MiB on {big}" if big else "none"
            why = f"needs {vm.memory_mb} MiB, largest free {'elsewhere ' if on else ''}is {room}"
            if not on:
                notes.append(f"{vm.name}: not placed: {why}")
                continue
        else:
            why = _why(vm.labels, workers, fit, fit, want)
        notes.append(f"{vm.name}: {len(on)} of {want} (primary and {vm.backups} backup"
                     f"{'s' if vm.backups != 1 else ''}) placed: {why}")
    return notes


def _why(labels: dict[str, str], workers: list[LiveMember], fit: list[LiveMember],
         runs: list[LiveMember], want: int) -> str:
    sel = "{" + ", ".join(f"{k}: {v}" for k, v in labels.items()) + "}"
    among = f" among nodes matching {sel}" if labels else ""
    if not workers:
        return "no live node runs services (hyphae run clients only)"
    if not fit:
        return f"labels {sel} match no live node"
    if not runs:
        return (f"no live node{among} has a container runtime (K3s nodes need "
                "components.k3s.binary and a live sclerotium)")
    if len(runs) >= want:
        return "waiting for the next placement"
    names, one = ", ".join(m.name for m in runs), len(runs) == 1
    if len(runs) < len(fit):
        return f"only {names} {'has' if one else 'have'} a container runtime{among}"
    if labels:
        return f"only {names} match{'es' if one else ''} labels {sel}, one per node"
    return f"only {names} can run it, one per node"
