"""The dashboard's view models: what one poll of a node's API shows, as typed records.

Pure: `dashboard(raw, now)` turns the JSON of one poll (`Raw`, filled by tui/fetch.py)
into a `Dashboard`; no sockets, clocks or terminals, so every screen is tested with data.
Rules:
- Member and share rows are agent/views.py's (`MemberRow`, `ShareRow`): the TUI and
  `mycelium status` read the API through the same typed edge and show the same cells.
- A missing piece (no Raft replica on the node read, no state held yet, an older node
  without a field) shows as "-" or an empty table, never as an exception.
- Time stamps are shown in UTC (a node console and an operator's laptop agree).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.desired.model import DesiredState
from agent.views import Convergence, MemberRow, ShareRow, member_rows

DASH = "-"


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


@dataclass
class Raw:
    """One poll of the node at `addr`: its API's JSON, None where a route gave nothing."""

    addr: str  # the node read (the address that answered)
    node: Mapping[str, Any]
    members: list[Mapping[str, Any]]
    share: Mapping[str, Any] | None = None
    primary: Mapping[str, Any] | None = None  # this node's or a live sclerotium's view
    primary_from: str = ""  # the member whose /primary this is
    events: list[Mapping[str, Any]] = field(default_factory=list)
    state: DesiredState | None = None  # the held network.yaml, verified and parsed


@dataclass(frozen=True)
class Header:
    network: str  # network name ("-" until a state is held)
    network_id: str
    node: str
    role: str
    addr: str
    uptime: str
    version: int  # held state version
    converged: str  # "yes", or who lags
    authority: str  # Primary / Seed / Latent: where state and placement come from
    problem: str  # what the node says is wrong now ("" when nothing)

    def lines(self) -> list[str]:
        """Two lines of about 80 columns; what the node says is wrong ends the second."""
        return [f"{self.network} ({self.network_id[:12]})  node {self.node} {self.role} "
                f"@ {self.addr}  up {self.uptime}",
                f"state v{self.version}  converged: {self.converged}  "
                f"authority: {self.authority}"
                + (f"  PROBLEM: {self.problem}" if self.problem else "")]


@dataclass(frozen=True)
class RaftSeat:
    name: str  # member name, or the Raft address when no member has it
    addr: str
    health: str  # alive / suspect / dead as gossip sees the member, "?" unknown
    leader: bool
    dynamic: bool


@dataclass(frozen=True)
class Backbone:
    read_from: str  # the node whose Raft replica was read, "" when none answered
    leader: str
    quorum: bool
    possibly_stale: bool
    committed_version: int
    placement_version: int
    seats: tuple[RaftSeat, ...]
    target: int | None  # spores.primary.target_sclerotia of the held state
    seed_locations: tuple[str, ...]
    seed_log: Mapping[str, Any] = field(default_factory=dict)  # the node read's reads/writes

    def lines(self) -> list[str]:
        if not self.read_from:
            return ["no Raft replica answered (no sclerotium in reach)",
                    *self._seed_lines()]
        stale = "  (possibly stale: a follower's view)" if self.possibly_stale else ""
        out = [f"Primary spore read on {self.read_from}{stale}",
               f"leader: {self.leader or 'none'}   quorum: {'yes' if self.quorum else 'NO'}"
               f"   committed state v{self.committed_version}   "
               f"placement p{self.placement_version}",
               f"Raft members ({len(self.seats)}"
               + (f", target {self.target}" if self.target is not None else "") + "):"]
        for s in self.seats:
            out.append(f"  {s.name:<16} {s.addr:<22} {s.health:<8}"
                       f"{' leader' if s.leader else ''}{' dynamic' if s.dynamic else ''}")
        return out + self._seed_lines()

    def _seed_lines(self) -> list[str]:
        """Each seed location, with when the node read last read and wrote it."""
        locations = list(self.seed_locations) + sorted(set(self.seed_log)
                                                       - set(self.seed_locations))
        if not locations:
            return ["Seed spore: no locations in the held state"]
        out = ["Seed spore locations (last read / written by this node):"]
        for loc in locations:
            log = _dict(self.seed_log.get(loc))
            out.append(f"  {loc}")
            out.append("    " + "; ".join(_seed_io(what, _dict(log.get(what)))
                                          for what in ("read", "written")))
        return out


def _seed_io(what: str, io: Mapping[str, Any]) -> str:
    t = io.get("time")
    if not isinstance(t, int | float):
        return f"never {what}"
    how = "ok" if io.get("ok") else "FAILED"
    return f"{what} {time.strftime('%H:%M:%S', time.gmtime(t))} {how} {io.get('detail', '')}"


@dataclass(frozen=True)
class ServiceRow:
    kind: str  # endomycete | endophyte
    name: str
    wanted: str  # replicas asked ("-" when the state is not held)
    placed: tuple[str, ...]  # nodes the committed placement runs it on (primary first)
    applied: tuple[str, ...]  # of those, nodes whose last apply is ok at the held version
    backups: tuple[str, ...] = ()  # endophytes: nodes keeping a memory backup

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.kind, self.wanted, str(len(self.placed)),
                str(len(self.applied)), ",".join(self.placed) or DASH,
                ",".join(self.backups) or DASH)


SERVICE_HEAD = ("NAME", "KIND", "WANTED", "PLACED", "APPLIED", "WHERE", "BACKUPS")


@dataclass(frozen=True)
class EventRow:
    time: float
    kind: str
    message: str
    node: str = ""

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.time)) if self.time else "--:--:--"
        who = f"{self.node} " if self.node else ""
        return f"{stamp} {who}{self.kind:<9} {self.message}"

    @classmethod
    def from_api(cls, e: Mapping[str, Any], node: str = "") -> EventRow:
        t = e.get("time")
        return cls(float(t) if isinstance(t, int | float) else 0.0, str(e.get("kind", "?")),
                   str(e.get("message", "")), node)


@dataclass(frozen=True)
class Dashboard:
    header: Header
    members: tuple[MemberRow, ...]
    backbone: Backbone
    services: tuple[ServiceRow, ...]
    events: tuple[EventRow, ...]
    share: ShareRow | None  # the node read's own share
    placement: Mapping[str, ShareRow]  # every node's share, from the committed placement


def uptime_text(seconds: float | None) -> str:
    """`3d 04h`, `2h 05m`, `4m 09s`, `12s`; "-" unknown."""
    if seconds is None or seconds < 0:
        return DASH
    s = int(seconds)
    d, h, m = s // 86400, s // 3600 % 24, s // 60 % 60
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


def authority_text(share: Mapping[str, Any] | None) -> str:
    """Where the node's state and membership come from (Primary > Seed > Latent)."""
    dec = _dict(_dict(share).get("decision"))
    state, members = dec.get("state_source"), dec.get("members_source")
    if not state and not members:
        return DASH
    if state == members or not members:
        return str(state).capitalize()
    return f"{str(state).capitalize()} (members: {members})"


def converged_text(members: Sequence[MemberRow], version: int) -> str:
    conv = Convergence.of(members, version)
    if conv.done:
        return "yes"
    if not conv.live:
        return "no live members"
    return f"no: {conv.lag()}"


def header(raw: Raw, members: Sequence[MemberRow], now: float) -> Header:
    n = raw.node
    started = n.get("started")
    up = now - float(started) if isinstance(started, int | float) else None
    version = int(n.get("version") or 0)
    name = raw.state.network if raw.state is not None else DASH
    return Header(network=name, network_id=str(n.get("network_id") or DASH),
                  node=str(n.get("name", "?")), role=str(n.get("role", "?")), addr=raw.addr,
                  uptime=uptime_text(up), version=version,
                  converged=converged_text(members, version),
                  authority=authority_text(raw.share), problem=str(n.get("problem") or ""))


def backbone(raw: Raw, members: Sequence[MemberRow]) -> Backbone:
    p = _dict(raw.primary)
    by_raft = {m.raft_addr: m for m in members if m.raft_addr}
    leader_addr = str(p.get("leader") or "")
    dynamic = _dict(p.get("dynamic"))
    seats = []
    for addr in sorted(str(a) for a in _list(p.get("raft_members"))):
        m = by_raft.get(addr)
        name = m.name if m else addr
        seats.append(RaftSeat(name, addr, m.state if m else "?", addr == leader_addr,
                              name in dynamic))
    leader = by_raft[leader_addr].name if leader_addr in by_raft else leader_addr
    st = raw.state
    return Backbone(read_from=raw.primary_from if raw.primary is not None else "",
                    leader=leader, quorum=bool(p.get("quorum")),
                    possibly_stale=bool(p.get("possibly_stale")),
                    committed_version=int(p.get("version") or 0),
                    placement_version=int(p.get("placement_version") or 0),
                    seats=tuple(seats),
                    target=st.spores.primary.target_sclerotia if st is not None else None,
                    seed_locations=st.spores.seed.locations if st is not None else (),
                    seed_log=_dict(raw.node.get("seed")))


def placement_shares(raw: Raw) -> dict[str, ShareRow]:
    """Every node's share in the committed placement the Primary holds."""
    p = _dict(raw.primary)
    shares = _dict(_dict(p.get("placement")).get("shares"))
    out = {}
    for name, sh in shares.items():
        out[str(name)] = ShareRow.from_api({"node": name, "share": sh,
                                            "placement_version": p.get("placement_version")})
    return out


def services(raw: Raw, members: Sequence[MemberRow], shares: Mapping[str, ShareRow]
             ) -> tuple[ServiceRow, ...]:
    """Endomycetes and endophytes: asked (held state), placed (committed placement) and
    applied (placed nodes whose last apply is ok at the held version)."""
    version = int(raw.node.get("version") or 0)
    ok = {m.name for m in members
          if m.apply_status == "ok" and m.applied_version >= version and m.live}
    st = raw.state
    wanted: dict[tuple[str, str], str] = {}
    if st is not None:
        wanted.update({("endomycete", s.name): str(s.replicas) for s in st.endomycetes})
        wanted.update({("endophyte", v.name): f"1+{v.backups}" for v in st.endophytes})
    placed: dict[tuple[str, str], list[str]] = {k: [] for k in wanted}
    backups: dict[tuple[str, str], list[str]] = {}
    for node in sorted(shares):
        sh = shares[node]
        for s in sh.services:
            placed.setdefault(("endomycete", s), []).append(node)
        for s in sh.vms:
            placed.setdefault(("endophyte", s), []).append(node)
        for s in sh.backups:
            backups.setdefault(("endophyte", s), []).append(node)
    rows = []
    for key in sorted(placed, key=lambda k: (k[0], k[1])):
        where = tuple(placed[key])
        rows.append(ServiceRow(key[0], key[1], wanted.get(key, DASH), where,
                               tuple(n for n in where if n in ok),
                               tuple(backups.get(key, ()))))
    return tuple(rows)


def dashboard(raw: Raw, now: float) -> Dashboard:
    members = tuple(member_rows(raw.members))
    shares = placement_shares(raw)
    own = ShareRow.from_api(raw.share) if raw.share is not None else None
    events = tuple(sorted((EventRow.from_api(e) for e in raw.events), key=lambda e: e.time))
    return Dashboard(header(raw, members, now), members, backbone(raw, members),
                     services(raw, members, shares), events, own, shares)


# --- members: sorting and filtering ------------------------------------------------------

SORT_KEYS = ("name", "role", "state", "version", "seen")


def sort_members(rows: Sequence[MemberRow], key: str) -> list[MemberRow]:
    """Members ordered by `key` (one of SORT_KEYS), then by name; the newest version and
    the most recently seen first, dead members last when sorted by state."""
    order = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
    keys = {
        "name": lambda m: (m.name,),
        "role": lambda m: (m.role, m.name),
        "state": lambda m: (order.get(m.state, 9), m.name),
        "version": lambda m: (-m.version, m.name),
        "seen": lambda m: (-(m.last_seen or 0.0), m.name),
    }
    return sorted(rows, key=keys.get(key, keys["name"]))


def filter_members(rows: Sequence[MemberRow], text: str) -> list[MemberRow]:
    """Members whose name, role, state or address contains `text` (case-insensitive);
    every member when `text` is blank."""
    t = text.strip().lower()
    if not t:
        return list(rows)
    return [m for m in rows if any(t in f.lower() for f in (m.name, m.role, m.state, m.addr))]


# --- one node in detail --------------------------------------------------------------------

@dataclass(frozen=True)
class NodeDetail:
    """The detail screen of one member: its row, its share, its last reconcile, its events."""

    member: MemberRow
    share: ShareRow | None
    apply: Mapping[str, Any]  # the node's own /node "status" (reconcile summary), if asked
    events: tuple[EventRow, ...]
    error: str = ""  # why the node itself could not be asked ("" when it answered)

    def lines(self, now: float) -> list[str]:
        m = self.member
        from agent.views import member_cells

        cells = dict(zip(("name", "role", "state", "raft", "version", "applied", "apply",
                          "placed", "addr", "seen"), member_cells(m, now), strict=True))
        out = [f"node {m.name} ({m.role}) at {m.addr or DASH}: {m.state}, "
               f"Raft {cells['raft']}, seen {cells['seen']}",
               f"holds {cells['version']}, applied {cells['applied']} ({cells['apply']}), "
               f"placement {cells['placed']}"]
        if self.error:
            out.append(f"(could not ask {m.name} itself: {self.error})")
        out.append("")
        out.append("Share:")
        sh = self.share
        if sh is None or sh.error is not None:
            out.append("  - (no committed placement names it)")
        else:
            out += [f"  authority   {sh.authority or DASH}   placement p{sh.placement_version}",
                    f"  k3s         {sh.k3s_role or DASH}",
                    f"  runtime     {sh.runtime or DASH}",
                    f"  services    {', '.join(sh.services) or DASH}",
                    f"  VMs         {', '.join(sh.vms) or DASH}",
                    f"  backups     {', '.join(sh.backups) or DASH}"]
        out += ["", "Last reconcile:", *reconcile_lines(self.apply)]
        out += ["", "Recent events:", *(f"  {e.line()}" for e in self.events[-15:])]
        if not self.events:
            out.append("  - (none)")
        return out


def reconcile_lines(status: Mapping[str, Any]) -> list[str]:
    """The reconcile summary a node reports (agent/node/reconcile.py): status, versions,
    changed and failed operations with their output."""
    if not status:
        return ["  - (not reported)"]
    took = status.get("duration_s")
    out = [f"  status {status.get('status', DASH)}, applied v{status.get('applied_version', 0)}"
           + (f", took {took:.1f}s" if isinstance(took, int | float) else ""),
           f"  operations changed {status.get('changed') or 0}, "
           f"failed {status.get('failed') or 0}"]
    if isinstance(status.get("components"), list):
        out.append(f"  components: {', '.join(map(str, status['components'])) or DASH}")
    out += [f"  waiting: {w}" for w in _list(status.get("waiting"))]
    if status.get("error"):
        out.append(f"  error: {status['error']}")
    failure = _dict(status.get("failure"))
    if failure:
        out.append(f"  failed operation: {failure.get('op') or DASH}; its output:")
        out += [f"    {line}" for line in str(failure.get("output", "")).splitlines()[-10:]]
    return out


def node_detail(member: MemberRow, raw_share: Mapping[str, Any] | None,
                placement: Mapping[str, ShareRow], node: Mapping[str, Any] | None,
                events: Sequence[Mapping[str, Any]], error: str = "") -> NodeDetail:
    """The detail of `member`: its share as it reports it (else the committed placement's),
    its reconcile summary and events as it reports them."""
    share = ShareRow.from_api(raw_share) if raw_share is not None else placement.get(member.name)
    n = _dict(node)
    return NodeDetail(member, share, _dict(n.get("reconcile") or n.get("status")),
                      tuple(EventRow.from_api(e) for e in events), error)
