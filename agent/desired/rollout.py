"""Staged rollout of a release: waves, the health gate, the leader's next step. Pure.

network.yaml's `rollout:` (waves such as [1, "10%", "50%", "all"], `healthy_seconds`,
`wave_deadline_seconds`, `auto_rollback`) says how a new `release:` reaches the nodes. The
Raft leader keeps a `Progress` in the Primary spore and moves it with `step` each tick, so
a new leader continues from the recorded wave. The node order is a hash of the release
and the node name: any leader computes the same one, and a different release starts on
different nodes.

A wave passes its gate when each of its nodes is alive, runs the release and is healthy
(apply not failed), continuously for `healthy_seconds`. A wave whose node rolled the
release back (its watchdog did), or that is not through its gate within
`wave_deadline_seconds`, fails: the rollout stops (`failed`), or with `auto_rollback` it is
`rolled_back` and the nodes that took it return to the previous release. The operator can
`pause`, `resume` and `abort` (nodes keep what they run; no new node takes it).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from agent.desired.model import Release, RolloutPolicy

RUNNING, PAUSED, FAILED, DONE, ABORTED, ROLLED_BACK = (
    "running", "paused", "failed", "done", "aborted", "rolled_back")
ACTIONS = {"pause": (RUNNING,), "resume": (PAUSED, FAILED), "abort": (RUNNING, PAUSED, FAILED)}


@dataclass(frozen=True)
class NodeView:
    """What gossip says of one node, for the gate."""

    name: str
    alive: bool
    running: str  # sha256 of the release it runs
    healthy: bool  # apply not failed
    bad: tuple[str, ...] = ()  # releases its watchdog rolled back
    fixed: bool = False  # it never installs a release (run without --release-root)


@dataclass(frozen=True)
class Progress:
    sha256: str
    version: str
    order: tuple[str, ...]  # nodes in rollout order
    previous: str = ""  # the release most nodes ran when it started (for auto_rollback)
    previous_version: str = ""
    wave: int = 0
    status: str = RUNNING
    wave_started: float = 0.0
    healthy_since: float = 0.0  # 0 while the wave is not all healthy
    reason: str = ""
    seq: int = 1  # every change is a higher seq (the Primary keeps the highest)
    services: tuple[str, ...] = ()  # a staged state change: the services it restarts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "order": list(self.order), "services": list(self.services)}

    @classmethod
    def from_dict(cls, d: Any) -> Progress | None:
        if not isinstance(d, dict) or not d.get("sha256"):
            return None
        try:
            return cls(str(d["sha256"]), str(d["version"]), tuple(map(str, d["order"])),
                       str(d.get("previous", "")), str(d.get("previous_version", "")),
                       int(d.get("wave", 0)), str(d.get("status", RUNNING)),
                       float(d.get("wave_started", 0)), float(d.get("healthy_since", 0)),
                       str(d.get("reason", "")), int(d.get("seq", 1)),
                       tuple(map(str, d.get("services") or ())))
        except (KeyError, TypeError, ValueError):
            return None


def wave_counts(waves: tuple[str, ...], n: int) -> list[int]:
    """Cumulative node counts per wave for n nodes: ("1", "10%", "50%", "all"), 5 ->
    [1, 3, 5] (a wave that adds nobody is skipped; a percentage rounds up)."""
    counts: list[int] = []
    for w in waves:
        if w == "all":
            c = n
        elif w.endswith("%"):
            c = math.ceil(n * float(w[:-1]) / 100)
        else:
            c = int(w)
        c = max(1, min(c, n))
        if not counts or c > counts[-1]:
            counts.append(c)
    if not counts or counts[-1] < n:
        counts.append(n)
    return counts


def node_order(sha256: str, names: list[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: hashlib.sha256(f"{sha256}/{n}".encode())
                        .hexdigest()))


def start(want: Release, nodes: list[NodeView], now: float) -> Progress:
    """A rollout of `want` over the nodes that can install it: one that never does (no
    --release-root) would hold its wave's gate until the deadline."""
    runs = [v.running for v in nodes if v.running != want.sha256]
    previous = max(set(runs), key=runs.count) if runs else ""
    return Progress(want.sha256, want.version,
                    node_order(want.sha256, [v.name for v in nodes if not v.fixed]),
                    previous, "", 0, RUNNING, now, 0.0)


def allowed(p: Progress, policy: RolloutPolicy) -> tuple[str, ...]:
    """The nodes that may take the release now (every node once it is done)."""
    if p.status == DONE:
        return p.order
    if p.status in (ABORTED, ROLLED_BACK):
        return ()
    return taken(p, policy)


def may_take(p: Progress | None, policy: RolloutPolicy | None, name: str, sha256: str) -> bool:
    """Whether node `name` may install release `sha256` now."""
    if policy is None:
        return True  # no rollout policy: every node takes it at once
    if p is None or p.sha256 != sha256:
        return False  # the leader has not started this rollout yet
    return p.status == DONE or name in allowed(p, policy)


def taken(p: Progress, policy: RolloutPolicy) -> tuple[str, ...]:
    """The nodes of the waves reached so far, whatever the status (who took it)."""
    counts = wave_counts(policy.waves, len(p.order))
    return p.order[:counts[min(p.wave, len(counts) - 1)]]


def step(p: Progress, policy: RolloutPolicy, nodes: dict[str, NodeView], now: float,
         kind: str = "release") -> Progress:
    """The leader's next move; the same Progress when nothing changes. `kind`: release,
    or state (a staged state change, agent/desired/staged.py: `bad` then lists the
    contents a node failed to apply)."""
    if p.status != RUNNING:
        return p
    counts = wave_counts(policy.waves, len(p.order))
    wave = p.order[:counts[min(p.wave, len(counts) - 1)]]
    views = [nodes.get(n) for n in wave]
    for name, v in zip(wave, views, strict=True):
        if v is not None and p.sha256 in v.bad:
            why = (f"{name} rolled release {p.version} back" if kind == "release"
                   else f"{name} failed to apply state {p.version}")
            return _fail(p, policy, why, now)
    if now - p.wave_started > policy.wave_deadline_seconds:
        late = [n for n, v in zip(wave, views, strict=True) if not _good(v, p.sha256)]
        who = (f": {', '.join(late)}" if late else
               f" (healthy for less than {policy.healthy_seconds:g} s)")
        return _fail(p, policy, f"wave {p.wave + 1} not healthy within "
                     f"{policy.wave_deadline_seconds:g} s{who}", now)
    if not all(_good(v, p.sha256) for v in views):
        return replace(p, healthy_since=0.0, seq=p.seq + 1) if p.healthy_since else p
    if not p.healthy_since:
        return replace(p, healthy_since=now, seq=p.seq + 1)
    if now - p.healthy_since < policy.healthy_seconds:
        return p
    if p.wave + 1 >= len(counts):
        return replace(p, status=DONE, reason="", seq=p.seq + 1)
    return replace(p, wave=p.wave + 1, wave_started=now, healthy_since=0.0, seq=p.seq + 1)


def _good(v: NodeView | None, sha256: str) -> bool:
    return v is not None and v.alive and v.running == sha256 and v.healthy


def _fail(p: Progress, policy: RolloutPolicy, why: str, now: float) -> Progress:
    status = ROLLED_BACK if policy.auto_rollback and p.previous else FAILED
    return replace(p, status=status, reason=why, healthy_since=0.0, seq=p.seq + 1)


def act(p: Progress, action: str, now: float) -> Progress:
    """The operator's pause, resume or abort; ValueError when it does not apply."""
    if action not in ACTIONS:
        raise ValueError(f"unknown rollout action {action!r}; use pause, resume or abort")
    if p.status not in ACTIONS[action]:
        raise ValueError(f"rollout of {p.version} is {p.status}: cannot {action}")
    status = {"pause": PAUSED, "resume": RUNNING, "abort": ABORTED}[action]
    return replace(p, status=status, reason=f"{action} by the operator",
                   wave_started=now if status == RUNNING else p.wave_started,
                   healthy_since=0.0, seq=p.seq + 1)
