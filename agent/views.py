"""What an operator sees: the API's JSON turned into typed rows, and rows into text.

Rendering is a pure function of data, so the `mycelium` CLI and the TUI show the same
thing from the same code, and a table test is given data -> expected lines. Rules:
- Records from the API are typed once here, at the edge (`MemberRow.from_api`,
  `ShareRow.from_api`); they tolerate missing or null keys (an older node may not send
  them) and never raise on a short record.
- Nothing here does I/O: no sockets, files, clocks or terminals. The time a "seen"
  column is measured against is passed in; the caller writes the text where it goes.
- Plan and apply reports are read through small Protocols of what is shown, so this
  module imports nothing from the rest of mycelium and any layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

LIVE_STATES = ("alive", "suspect")  # members expected to converge on a pushed version
BAR_WIDTH = 30


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


@dataclass(frozen=True)
class MemberRow:
    """One member as a node reports it in /api/v1/members."""

    name: str
    role: str
    state: str
    version: int  # the state version the member holds
    applied_version: int  # the version its reconcile loop last applied
    apply_status: str  # reconcile summary: ok, pending, waiting, degraded... ("" unknown)
    apply_failed: int  # operations that failed in the last apply
    placement_version: int
    addr: str
    last_seen: float | None  # wall-clock time of the last gossip heard from it
    raft_addr: str  # "" when the member is not in the Raft group
    raft_leader: bool
    release: str = ""  # the agent release it runs: "0.2.0 (1a2b3c4d5e6f)", "" if not said
    releases_held: int = 0
    rolled_back: tuple[str, ...] = ()  # sha256 prefixes of releases rolled back there
    releases_used: bool = False  # it runs, holds or rolled back a release
    # the progress its Raft replica holds of the release rollout and of a staged change
    rollout: Mapping[str, Any] = field(default_factory=dict)
    staged: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, m: Mapping[str, Any]) -> MemberRow:
        st, raft = _dict(m.get("status")), _dict(m.get("raft"))
        seen = m.get("last_seen")
        return cls(name=str(m.get("name", "?")), role=str(m.get("role", "?")),
                   state=str(m.get("state", "?")), version=_int(m.get("version")),
                   applied_version=_int(st.get("applied_version")),
                   apply_status=str(st.get("status") or ""),
                   apply_failed=_int(st.get("failed")),
                   placement_version=_int(m.get("pv")), addr=str(m.get("addr", "")),
                   last_seen=float(seen) if isinstance(seen, int | float) else None,
                   raft_addr=str(raft.get("addr") or ""), raft_leader=bool(raft.get("leader")),
                   **_release_fields(_dict(m.get("rel"))))

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def _release_fields(rel: Mapping[str, Any]) -> dict[str, Any]:
    if not rel:
        return {}
    run, version = str(rel.get("run") or ""), str(rel.get("v") or "?")
    return {"release": f"{version} ({run[:12] if run else 'built-in'})",
            "releases_held": len(_names(rel.get("held"))),
            "rolled_back": tuple(b[:12] for b in _names(rel.get("bad"))),
            "releases_used": bool(run or _names(rel.get("held")) or _names(rel.get("bad"))),
            "rollout": _dict(rel.get("ro")), "staged": _dict(rel.get("cro"))}


@dataclass(frozen=True)
class ShareRow:
    """One node's share as it reports it in /api/v1/share, or why it could not be asked."""

    node: str
    authority: str = ""
    placement_version: int = 0
    k3s_role: str = ""
    services: tuple[str, ...] = ()  # endomycetes
    vms: tuple[str, ...] = ()  # endophytes it runs, with their state: "db:running"
    backups: tuple[str, ...] = ()  # endophytes it keeps a backup of
    runtime: str = ""  # container runtime and why: "podman (no components.k3s)"
    error: str | None = None
    # VM -> when the newest checkpoint it holds as a backup arrived (its apply status `ckpt`)
    checkpoints: tuple[tuple[str, float], ...] = ()
    # VM replicated from here -> (buffer fill %, throttle %, wall second of its newest
    # checkpoint), from its apply status `rep`
    replication: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    @classmethod
    def from_api(cls, s: Mapping[str, Any]) -> ShareRow:
        if "error" in s:
            return cls(node=str(s.get("node")), error=str(s["error"]))
        sh = _dict(s.get("share"))
        runtime = f"{sh['runtime']} ({sh.get('runtime_reason')})" if sh.get("runtime") else ""
        return cls(node=str(s.get("node")), authority=authority_cell(s),
                   placement_version=_int(s.get("placement_version")),
                   k3s_role=str(sh.get("k3s_role") or ""),
                   services=_names(sh.get("endomycetes")),
                   vms=_vm_cells(sh.get("endophytes_primary"), s.get("vms")),
                   backups=_names(sh.get("endophytes_backup")), runtime=runtime,
                   checkpoints=tuple((str(k), float(v)) for k, v in _dict(
                       _dict(s.get("apply")).get("ckpt")).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)),
                   replication=rep_meta(_dict(s.get("apply")).get("rep")))

    @classmethod
    def failed(cls, node: str, error: str) -> ShareRow:
        return cls(node=node, error=error)


def rep_meta(value: Any) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """A gossiped `rep` ({VM: [fill %, throttle %, second]}), malformed entries skipped."""
    return tuple((str(k), (v[0], v[1], v[2])) for k, v in _dict(value).items()
                 if isinstance(v, list) and len(v) == 3
                 and all(isinstance(x, int) and not isinstance(x, bool) for x in v))


def _vm_cells(placed: Any, running: Any) -> tuple[str, ...]:
    """Each VM placed here as NAME:STATE (the supervisor's state, "-" if it has none yet),
    and any VM still supervised here that the share no longer names (stopping)."""
    states = {str(_dict(v).get("name")): str(_dict(v).get("state") or "-")
              for v in running} if isinstance(running, list) else {}
    names = list(dict.fromkeys([*_names(placed), *states]))
    return tuple(f"{n}:{states[n]}" if n in states else n for n in names)


@dataclass(frozen=True)
class VmRow:
    """One VM as the node supervising it reports it in /api/v1/vms."""

    name: str
    node: str
    state: str
    reason: str = ""
    accel: str = ""
    qmp: str = ""
    uptime_s: float | None = None
    restarts: int = 0
    cpus: int = 0
    memory_mb: int = 0
    ports: tuple[str, ...] = ()
    boot: str = ""
    accel_reason: str = ""  # why that accelerator (the KVM probe's verdict)
    replication: str = ""  # the primary's last checkpoint, one line ("" if not replicated)
    health: str = ""  # its buffer fill, throttle level and lag, one line

    @classmethod
    def from_api(cls, node: str, v: Mapping[str, Any]) -> VmRow:
        up = v.get("uptime_s")
        return cls(name=str(v.get("name", "?")), node=node, state=str(v.get("state") or "?"),
                   reason=str(v.get("reason") or ""), accel=str(v.get("accel") or ""),
                   qmp=str(v.get("qmp") or ""),
                   uptime_s=float(up) if isinstance(up, int | float) else None,
                   restarts=_int(v.get("restarts")), cpus=_int(v.get("cpus")),
                   memory_mb=_int(v.get("memory_mb")), ports=_names(v.get("ports")),
                   boot=str(v.get("boot") or ""),
                   accel_reason=str(v.get("accel_reason") or ""),
                   replication=replication_cell(_dict(v.get("replication"))),
                   health=health_cell(_dict(v.get("replication"))))


def _kib(n: Any) -> str:
    return f"{_int(n) >> 10} KiB" if isinstance(n, int) else "all"


def replication_cell(r: Mapping[str, Any]) -> str:
    """A primary's replication status (agent/node/vm/replicator.py) in one line."""
    last = _dict(r.get("last"))
    if not last:
        return f"no checkpoint yet ({r['error']})" if r.get("error") else \
            ("no checkpoint yet" if r else "")
    acked = ", ".join(f"{a}={s}" for a, s in sorted(_dict(r.get("acked")).items())) or "none"
    pause = last.get("pause_s")
    disk = f"disk {_kib(last['disk_bytes'])}, paused " + (
        f"{pause * 1000:.0f} ms, " if isinstance(pause, int | float) else "? ms, ") \
        if "disk_bytes" in last else ""  # a VM with a disk (diskckpt.py)
    return (f"checkpoint {_int(last.get('seq'))}{' (full)' if last.get('full') else ''}: "
            f"dirtied {_kib(last.get('dirtied_bytes'))}, sent {_kib(last.get('wire_bytes'))}, "
            f"{disk}cycle {last.get('cycle_s', '?')} s; backups took {acked}")


def health_cell(r: Mapping[str, Any]) -> str:
    """A primary's buffer fill, throttle level and replication lag (since its newest
    checkpoint started) in one line, "" when it does not say."""
    fill, thr, lag = r.get("buffer_fill"), r.get("throttle"), r.get("lag_s")
    if not isinstance(fill, int | float) or not isinstance(thr, int | float):
        return ""
    return (f"buffer {fill * 100:.0f} % full, throttle {thr * 100:.0f} %, lag "
            + (f"{lag:.0f} s" if isinstance(lag, int | float) else "-")
            + (", paused by a full buffer" if r.get("paused") else ""))


@dataclass(frozen=True)
class BackupRow:
    """A checkpoint a node holds as a VM's backup, from /api/v1/vms `backups`."""

    name: str
    node: str
    seq: int | None
    age_s: float | None
    refused: int = 0
    last_refusal: str = ""


def backup_rows(replies: Iterable[Mapping[str, Any]]) -> list[BackupRow]:
    out = []
    for r in replies:
        for b in (r.get("backups") or []) if "error" not in r else []:
            b = _dict(b)
            seq, age = b.get("seq"), b.get("age_s")
            out.append(BackupRow(str(b.get("vm", "?")), str(r.get("node")),
                                 seq if isinstance(seq, int) else None,
                                 float(age) if isinstance(age, int | float) else None,
                                 _int(b.get("refused")), str(b.get("last_refusal") or "")))
    return out


def vm_rows(replies: Iterable[Mapping[str, Any]]) -> list[VmRow]:
    """Every VM in the /api/v1/vms replies of several nodes (replies with an error skipped)."""
    return [VmRow.from_api(str(r.get("node")), _dict(v)) for r in replies
            if "error" not in r for v in (r.get("vms") or [])]


VM_HEAD = ("NAME", "NODE", "STATE", "ACCEL", "QMP", "UPTIME", "RESTARTS", "PORTS", "REASON")


def duration_cell(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def vms_table(rows: Iterable[VmRow]) -> str:
    """`mycelium vm list`: each supervised VM, by name then node."""
    cells = [(v.name, v.node, v.state, v.accel or "-", v.qmp or "-", duration_cell(v.uptime_s),
              str(v.restarts), ",".join(v.ports) or "-", v.reason[:70] or "-")
             for v in sorted(rows, key=lambda v: (v.name, v.node))]
    return table([VM_HEAD, *cells])


def vm_status_lines(rows: Sequence[VmRow], name: str,
                    backups: Sequence[BackupRow] = ()) -> list[str]:
    """`mycelium vm status NAME`: where it runs and how, what a move does to it, and the
    checkpoints its backups hold."""
    held = [f"  backup on {b.node}: " + ("nothing yet" if b.seq is None else
            f"checkpoint {b.seq}, {duration_cell(b.age_s)} old")
            + (f", {b.refused} refused (last: {b.last_refusal[:60]})" if b.refused else "")
            for b in backups if b.name == name]
    if not rows:
        return [f"{name}: not supervised by any live node (not placed, or its node is "
                "down; see `mycelium status --shares`)", *held]
    lines = []
    for v in rows:
        lines += [f"{v.name} on {v.node}: {v.state}" + (f" ({v.reason})" if v.reason else ""),
                  f"  accel {v.accel or '-'}, QMP {v.qmp or '-'}, up {duration_cell(v.uptime_s)}"
                  f", {v.restarts} restarts, {v.cpus} CPUs, {v.memory_mb} MiB",
                  f"  ports {', '.join(v.ports) or '-'}"]
        if v.accel_reason:
            lines.append(f"  accel {v.accel}: {v.accel_reason}")
        if v.boot == "cold" and v.replication:
            lines.append("  boot: cold - replicated: a move resumes it from its last "
                         "checkpoint")
        elif v.boot == "cold":
            lines.append("  boot: cold - on a move its memory and disk stay behind unless "
                         "it is replicated (with backups)")
        elif v.boot:
            lines.append(f"  boot: {v.boot} (its memory kept)")
        if v.replication:
            lines.append(f"  replication: {v.replication}")
        if v.health:
            lines.append(f"  replication: {v.health}")
    return lines + held


def authority_cell(s: Mapping[str, Any]) -> str:
    """What the node acts on, from its /api/v1/share: its placement comes from the Primary
    once one is committed (p1 and up), else from gossip; its state from the decision's
    source, named too when that differs ("latent,state:primary" until a leader commits)."""
    placed = "primary" if _int(s.get("placement_version")) else "latent"
    state = str(_dict(s.get("decision")).get("state_source") or "none")
    return placed if state in (placed, "none") else f"{placed},state:{state}"


def member_rows(members: Iterable[Mapping[str, Any]]) -> list[MemberRow]:
    return [MemberRow.from_api(m) for m in members]


def share_rows(shares: Iterable[Mapping[str, Any]]) -> list[ShareRow]:
    return [ShareRow.from_api(s) for s in shares]


# --- tables -------------------------------------------------------------------------------

MEMBER_HEAD = ("NAME", "ROLE", "STATE", "RAFT", "VERSION", "APPLIED", "APPLY", "PLACED",
               "ADDRESS", "SEEN")
SHARE_HEAD = ("NODE", "AUTHORITY", "PLACED", "K3S", "SERVICES", "VMS", "BACKUPS", "RUNTIME")


def raft_cell(m: MemberRow) -> str:
    if not m.raft_addr:
        return "-"
    return "leader" if m.raft_leader else "member"


def apply_cell(m: MemberRow) -> str:
    """Reconcile status as gossiped (agent/node/reconcile.py summary): ok, waiting, degraded..."""
    cell = m.apply_status or "-"
    if m.apply_failed:
        cell += f" ({m.apply_failed} failed)"
    return cell


def seen_cell(m: MemberRow, now: float) -> str:
    return f"{max(0.0, now - m.last_seen):.0f}s ago" if m.last_seen else "-"


def member_cells(m: MemberRow, now: float) -> tuple[str, ...]:
    """One row of the members table, in MEMBER_HEAD's order."""
    return (m.name, m.role, m.state, raft_cell(m), f"v{m.version}", f"v{m.applied_version}",
            apply_cell(m), f"p{m.placement_version}", m.addr, seen_cell(m, now))


def backup_cell(s: ShareRow, now: float | None) -> str:
    """VMs backed up here, each with the age of the newest checkpoint held (replication
    lag as this backup sees it) when it has one."""
    taken = dict(s.checkpoints)
    return ",".join(f"{b} (ckpt {max(0.0, now - taken[b]):.0f}s)"
                    if now is not None and b in taken else b for b in s.backups) or "-"


def vm_cell(s: ShareRow, now: float | None) -> str:
    """VMs run here as NAME:STATE, a replicated one with its buffer fill, throttle and
    replication lag (since its newest checkpoint started) as gossiped:
    `tiny:running (buf 0% thr 0% lag 2s)`."""
    rep = dict(s.replication)
    out = []
    for cell in s.vms:
        r = rep.get(cell.split(":", 1)[0])
        if r is not None and now is not None and r[2]:
            cell += f" (buf {r[0]}% thr {r[1]}% lag {max(0.0, now - r[2]):.0f}s)"
        out.append(cell)
    return ",".join(out) or "-"


def share_cells(s: ShareRow, now: float | None = None) -> tuple[str, ...]:
    """One row of the shares table, in SHARE_HEAD's order."""
    if s.error is not None:
        return (s.node, "error: " + s.error[:60], "", "", "", "", "", "")
    return (s.node, s.authority, f"p{s.placement_version}", s.k3s_role or "-",
            ",".join(s.services) or "-", vm_cell(s, now), backup_cell(s, now),
            s.runtime or "-")


def members_table(members: Iterable[MemberRow], now: float) -> str:
    """Members by name: role, liveness, Raft seat, held/applied/placed versions, last seen."""
    rows = [member_cells(m, now) for m in sorted(members, key=lambda m: m.name)]
    return table([MEMBER_HEAD, *rows])


def shares_table(shares: Iterable[ShareRow], now: float | None = None) -> str:
    """Each node's share: by whose authority, which placement, what it runs."""
    return table([SHARE_HEAD, *(share_cells(s, now)
                                for s in sorted(shares, key=lambda s: s.node))])


RELEASE_HEAD = ("NODE", "RELEASE", "HELD", "ROLLED BACK")


def releases_table(members: Iterable[MemberRow]) -> str:
    """Each node's agent release (shown once any node reports one)."""
    return table([RELEASE_HEAD, *((m.name, m.release or "-", str(m.releases_held),
                                   ",".join(m.rolled_back) or "-")
                                  for m in sorted(members, key=lambda m: m.name))])


def rollout_notes(members: Iterable[MemberRow]) -> list[str]:
    """One line for the release rollout and one for a staged state change, from the
    newest progress any replica gossips (`mycelium rollout status [--services]` says
    more)."""
    members = list(members)
    lines = []
    for what, get in (("rollout of release", lambda m: m.rollout),
                      ("staged change of state", lambda m: m.staged)):
        found = [get(m) for m in members if get(m)]
        if not found:
            continue
        p = max(found, key=lambda d: _int(d.get("seq")))
        if what.startswith("staged") and not p.get("services"):
            continue  # nothing restarted: it was never staged
        restarts = (f" (restarts {', '.join(_names(p.get('services')))})"
                    if p.get("services") else "")
        lines.append(f"{what} {p.get('version')}{restarts}: {p.get('status')}, wave "
                     f"{_int(p.get('wave')) + 1}" + (f"; {p.get('reason')}"
                                                     if p.get("reason") else ""))
    return lines


def status_frame(members: Iterable[MemberRow], shares: Sequence[ShareRow], now: float,
                 notes: Sequence[str] = ()) -> str:
    """What `mycelium status` prints (one --watch frame): members, each node's release
    once any node runs or holds one, then shares if asked, then what the held state asks
    that cannot be placed."""
    members = list(members)
    text = members_table(members, now)
    if any(m.releases_used for m in members):
        text += f"\n\n{releases_table(members)}"
    if said := rollout_notes(members):
        text += "\n\n" + "\n".join(said)
    if shares:
        text += f"\n\n{shares_table(shares, now)}"
    return text + "".join(f"\n{n}" for n in ("", *notes)) if notes else text


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, as wide as their widest cell; no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# --- push convergence ---------------------------------------------------------------------

@dataclass(frozen=True)
class Convergence:
    """How far the live members are towards holding `version`."""

    version: int
    live: tuple[MemberRow, ...]
    lagging: tuple[MemberRow, ...]

    @classmethod
    def of(cls, members: Iterable[MemberRow], version: int) -> Convergence:
        live = tuple(m for m in members if m.live)
        return cls(version, live, tuple(m for m in live if m.version < version))

    @property
    def done(self) -> bool:
        return bool(self.live) and not self.lagging

    def bar(self) -> str:
        return progress_bar(len(self.live) - len(self.lagging), len(self.live), self.version)

    def lag(self) -> str:
        return ", ".join(f"{m.name} (v{m.version})" for m in self.lagging)


def progress_bar(done: int, total: int, version: int) -> str:
    """`[#####.....] 2/3 nodes at v4` (the caller redraws it in place with a carriage return)."""
    fill = int(BAR_WIDTH * done / total) if total else 0
    return f"[{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {done}/{total} nodes at v{version}"


# --- plan and apply reports ---------------------------------------------------------------

class PlanView(Protocol):
    """What is shown of a node's plan (agent/desired/plan.py NodePlan)."""

    @property
    def node(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def components(self) -> Sequence[str]: ...
    @property
    def waiting(self) -> Sequence[str]: ...
    @property
    def share(self) -> Mapping[str, Any]: ...


class OpView(Protocol):
    """What is shown of one operation's result (recipes/run.py OpResult)."""

    @property
    def name(self) -> str: ...
    @property
    def changed(self) -> bool: ...
    @property
    def success(self) -> bool | None: ...
    @property
    def commands(self) -> Sequence[str]: ...
    @property
    def output(self) -> str: ...


class ReportView(Protocol):
    """What is shown of a run's report (recipes/run.py Report)."""

    @property
    def ops(self) -> Sequence[OpView]: ...
    @property
    def changed(self) -> Sequence[OpView]: ...
    @property
    def failed(self) -> Sequence[OpView]: ...
    @property
    def ok(self) -> bool: ...

    def summary(self) -> str: ...


def plan_lines(plan: PlanView) -> list[str]:
    """A node's plan: role, state version, components, what waits, services it runs."""
    lines = [f"node {plan.node} ({plan.role}), state v{plan.version}",
             f"  components: {', '.join(plan.components)}"]
    if plan.share.get("runtime"):
        reason = plan.share.get("runtime_reason") or "default"
        lines.append(f"  runtime:    {plan.share['runtime']} ({reason})")
    lines += [f"  waiting:    {w}" for w in plan.waiting]
    if plan.share.get("endomycetes"):
        lines.append(f"  services:   {', '.join(plan.share['endomycetes'])}")
    if plan.share.get("endophytes_primary"):
        lines.append(f"  vms:        {', '.join(plan.share['endophytes_primary'])}")
    if plan.share.get("endophytes_backup"):
        lines.append(f"  vm backups: {', '.join(plan.share['endophytes_backup'])}")
    return lines


def dry_run_lines(report: ReportView | None, target: str) -> list[str]:
    """The operations a dry run would change, with their commands, then the summary."""
    if report is None:
        return ["  (give --target @local or @chroot/DIR to see the operations that would run)"]
    lines = []
    for op in report.changed:
        lines.append(f"  would change: {op.name}")
        lines += [f"      {c}" for c in op.commands]
    return [*lines, f"{target}: {report.summary()}"]


def apply_lines(report: ReportView, target: str) -> list[str]:
    """What an apply changed or failed, the output of each failure, then the summary."""
    lines = [f"  {'changed' if op.success else 'FAILED '} {op.name}" for op in report.ops
             if op.changed or op.success is False]
    lines += [f"--- output of {op.name}:\n{op.output.strip()}" for op in report.failed]
    if not report.changed and report.ok:
        return [*lines, f"{target}: nothing to change ({report.summary()})"]
    return [*lines, f"{target}: {report.summary()}"]


def _progress_line(what: str, policy: Mapping[str, Any], p: Mapping[str, Any],
                   allowed: Sequence[str]) -> str:
    waves = [str(w) for w in policy.get("waves") or ()]
    return (f"{what} {p.get('status')}: wave {_int(p.get('wave')) + 1} "
            f"({', '.join(allowed) or '-'}) of waves {', '.join(waves)}; gate "
            f"{policy.get('healthy_seconds')} s healthy, deadline "
            f"{policy.get('wave_deadline_seconds')} s, auto_rollback "
            f"{'on' if policy.get('auto_rollback') else 'off'}"
            + (f"; {p.get('reason')}" if p.get("reason") else ""))


def staged_lines(view: Mapping[str, Any]) -> list[str]:
    """`mycelium rollout status --services`: the staged change of the held state, and the
    content each node applies (GET /api/v1/rollout?kind=state)."""
    st, policy, p = _dict(view.get("state")), _dict(view.get("policy")), \
        _dict(view.get("progress"))
    cid = str(st.get("content", ""))
    lines = [f"state v{_int(st.get('version'))} (content {cid or '-'})"]
    if not policy:
        lines.append("no rollout policy: every node applies a new state at once")
    elif not p:
        lines.append("not recorded yet (the Raft leader records each new state's change)")
    elif p.get("status") == "done" and not p.get("services"):
        lines.append(f"nothing staged: {p.get('reason') or 'done'}")
    else:
        lines.append(_progress_line(f"staged change (restarts "
                                    f"{', '.join(_names(p.get('services'))) or '-'})",
                                    policy, p, _names(view.get("allowed"))))
        lines.append(f"previous content {p.get('previous') or '-'}")
    nodes = _dict(view.get("nodes"))
    rows = [("NODE", "STATE", "APPLIES", "FAILED", "HEALTHY")]
    for name in sorted(nodes):
        n = _dict(nodes[name])
        got = str(n.get("content") or "")
        rows.append((name, str(n.get("state", "?")),
                     "new" if got and got == cid else (got or "-"),
                     ",".join(_names(n.get("bad"))) or "-",
                     "yes" if n.get("healthy") else "no"))
    return [*lines, "", table(rows)]


def rollout_lines(view: Mapping[str, Any]) -> list[str]:
    """`mycelium rollout status`: the release, the policy, how far the rollout is, and
    each node's release (GET /api/v1/rollout)."""
    rel, policy, p = _dict(view.get("release")), _dict(view.get("policy")), \
        _dict(view.get("progress"))
    if not rel:
        return ["network.yaml names no release: every node keeps the agent it runs"]
    sha = str(rel.get("sha256", ""))
    lines = [f"release {rel.get('version')} ({sha[:12]})"]
    if not policy:
        lines.append("no rollout policy: every node takes it at once")
    elif not p:
        lines.append("rollout not started yet (the Raft leader starts it)")
    else:
        lines.append(_progress_line("rollout", policy, p, _names(view.get("allowed"))))
    nodes = _dict(view.get("nodes"))
    rows = [("NODE", "STATE", "RUNS", "HOLDS IT", "ROLLED BACK")]
    for name in sorted(nodes):
        n = _dict(nodes[name])
        run = str(n.get("run") or "")
        rows.append((name, str(n.get("state", "?")),
                     f"{n.get('v') or '?'} ({run[:12] if run else 'built-in'})",
                     "yes" if sha in _names(n.get("held")) else "no",
                     "yes" if sha in _names(n.get("bad")) else "-"))
    return [*lines, "", table(rows)]
