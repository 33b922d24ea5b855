"""A gossip member as the node reads it: its meta typed once, at the edge.

Meta comes from peers, so nothing in it is trusted to have the right shape: `from_wire`
is tolerant (a missing or mistyped field reads as its empty value, a negative or boolean
number as 0) and everything past it reads typed fields instead of `meta.get("x") or {}`.
`to_wire` writes the same keys back, so a node builds its own meta through the same type
and the API rows keep the shape the CLI reads. A record verified under its node's
certificate takes role and fingerprint from that certificate, whatever its meta says.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent.gossip.swim import Member


def count(v: Any) -> int:
    """A version or counter from a peer: anything but a positive int counts as 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


@dataclass(frozen=True)
class RaftMeta:
    """A node's Raft side as it gossips it (all empty when its Raft side is off)."""

    addr: str = ""
    leader: bool = False
    pv: int = 0  # the placement version its replica holds
    members: tuple[str, ...] | None = None  # the Raft members' addresses (leaders only)

    @classmethod
    def from_wire(cls, v: Any) -> RaftMeta:
        d = _obj(v)
        ms = d.get("members")
        return cls(_str(d.get("addr")), d.get("leader") is True, count(d.get("pv")),
                   tuple(a for a in ms if isinstance(a, str)) if isinstance(ms, list)
                   else None)

    def to_wire(self) -> dict[str, Any]:
        if not self.addr:
            return {}
        return {"addr": self.addr, "leader": self.leader, "pv": self.pv,
                **({"members": list(self.members)} if self.members is not None else {})}


@dataclass(frozen=True)
class ReleaseMeta:
    """The agent release a node runs and the artifacts it holds (and serves to peers)."""

    running: str = ""  # sha256 of the release it runs; "" for the agent it was built with
    version: str = ""  # the agent version it runs
    held: tuple[str, ...] = ()  # sha256 of the artifacts it serves
    bad: tuple[str, ...] = ()  # releases its watchdog rolled back
    rollout: dict[str, Any] = field(default_factory=dict)  # a Raft leader's rollout progress
    # the progress of a staged state change its Raft replica holds (agent/desired/staged.py)
    content_rollout: dict[str, Any] = field(default_factory=dict)
    fixed: bool = False  # it never installs a release (no --release-root): waves skip it

    @classmethod
    def from_wire(cls, v: Any) -> ReleaseMeta:
        d = _obj(v)
        return cls(_str(d.get("run")), _str(d.get("v")), _shas(d.get("held")),
                   _shas(d.get("bad")), _obj(d.get("ro")), _obj(d.get("cro")),
                   d.get("fx") is True)

    def to_wire(self) -> dict[str, Any]:
        return {"run": self.running, "v": self.version, "held": list(self.held),
                **({"fx": True} if self.fixed else {}),
                **({"bad": list(self.bad)} if self.bad else {}),
                **({"ro": self.rollout} if self.rollout else {}),
                **({"cro": self.content_rollout} if self.content_rollout else {})}


def _shas(v: Any) -> tuple[str, ...]:
    return tuple(h for h in v[:8] if isinstance(h, str)) if isinstance(v, list) else ()


@dataclass(frozen=True)
class PeerMeta:
    """What a node says about itself in gossip: role, held state, apply status, Raft."""

    role: str = ""
    version: int = 0
    sha256: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # the reconcile summary
    fp: str = ""  # its certificate's fingerprint
    pv: int = 0  # the placement version it acts on
    raft: RaftMeta = RaftMeta()
    release: ReleaseMeta = ReleaseMeta()

    @classmethod
    def from_wire(cls, v: Any) -> PeerMeta:
        d = _obj(v)
        return cls(_str(d.get("role")), count(d.get("version")), _str(d.get("sha256")),
                   _obj(d.get("status")), _str(d.get("fp")), count(d.get("pv")),
                   RaftMeta.from_wire(d.get("raft")), ReleaseMeta.from_wire(d.get("rel")))

    def to_wire(self) -> dict[str, Any]:
        raft = self.raft.to_wire()
        rel = self.release.to_wire() if self.release != ReleaseMeta() else {}
        return {"role": self.role, "version": self.version, "sha256": self.sha256,
                "status": self.status, "fp": self.fp, "pv": self.pv,
                **({"raft": raft} if raft else {}), **({"rel": rel} if rel else {})}

    @property
    def apply_status(self) -> str:
        """ok | waiting | degraded | applying | pending | off, or "" when unknown."""
        return _str(self.status.get("status"))


@dataclass(frozen=True)
class MemberView:
    """One row of the membership table: SWIM's record plus its typed meta."""

    name: str
    addr: str
    state: str  # alive | suspect | dead | left
    incarnation: int = 0
    meta: PeerMeta = PeerMeta()
    last_seen: float | None = None

    @classmethod
    def from_member(cls, m: Member, seen: float) -> MemberView:
        meta = PeerMeta.from_wire(m.meta)
        if m.cert is not None:  # verified: the certificate says who it is, not the meta
            meta = replace(meta, role=m.cert.role, fp=m.cert.fingerprint)
        return cls(m.name, m.addr, m.state, m.incarnation, meta, seen or None)

    @classmethod
    def from_row(cls, d: Any) -> MemberView:
        """A row as the API serves it (`to_row`), read back as tolerantly as gossip."""
        d = _obj(d)
        seen = d.get("last_seen")
        return cls(_str(d.get("name")), _str(d.get("addr")), _str(d.get("state")),
                   count(d.get("incarnation")), PeerMeta.from_wire(d),
                   float(seen) if isinstance(seen, int | float) and seen else None)

    def to_row(self) -> dict[str, Any]:
        m = self.meta
        return {"name": self.name, "addr": self.addr, "state": self.state,
                "incarnation": self.incarnation, "role": m.role or None,
                "version": m.version, "sha256": m.sha256, "status": m.status,
                "raft": m.raft.to_wire(), "fp": m.fp, "pv": m.pv, "last_seen": self.last_seen,
                **({"rel": m.release.to_wire()} if m.release != ReleaseMeta() else {})}

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0]
