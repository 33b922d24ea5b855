"""The Latent spore's protocol core: SWIM membership with Lifeguard, as pure logic.

No sockets and no clock of its own: callers pass `now` and get back events, so every
rule is table-testable. Rules:
- A member record is (incarnation, state). Higher incarnation wins; at equal
  incarnation dead > suspect > alive. `left` is final for that incarnation.
- Only a member itself raises its incarnation: when told it is suspect or dead it
  refutes with incarnation + 1. A restarted node starts from a clock-derived incarnation,
  so it outranks what the others remember of its previous life.
- A failed probe (direct and k indirect) makes the target suspect; a suspect not
  refuted within the suspicion timeout (scaled by log n) becomes dead.
- Lifeguard local health (LHM 0..8) rises when our probes fail or we have to refute, and
  falls on success; probe timeouts and suspicion timeouts stretch by (1 + LHM), so a
  starved node slows down instead of accusing healthy peers.
- Meta (role, held state version, convergence) is owned by its node and carries its own
  version; the higher meta version wins.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

RANK = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
MAX_LHM = 8


@dataclass(frozen=True)
class Member:
    name: str
    addr: str
    incarnation: int
    state: str = "alive"
    meta: dict[str, Any] = field(default_factory=dict)
    meta_version: int = 0
    changed: float = 0.0  # local time of the last state change (not gossiped)
    seen: float = 0.0  # local time we last heard from it directly (not gossiped)

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "addr": self.addr, "incarnation": self.incarnation,
                "state": self.state, "meta": self.meta, "meta_version": self.meta_version}


def outranks(new: Member, old: Member) -> bool:
    if new.incarnation != old.incarnation:
        return new.incarnation > old.incarnation
    return RANK[new.state] > RANK[old.state]


@dataclass
class Event:
    kind: str  # joined | alive | suspect | dead | left | refuted | meta
    name: str
    detail: str = ""


class Membership:
    def __init__(self, me: Member, seed: int | None = None) -> None:
        self.me = me
        self.members: dict[str, Member] = {}
        self.lhm = 0
        self.rng = random.Random(seed)
        self._probe_order: list[str] = []

    # --- merging what others say ------------------------------------------------------

    def merge(self, records: list[Member], now: float) -> list[Event]:
        events: list[Event] = []
        for r in records:
            if r.name == self.me.name:
                events += self._about_me(r)
                continue
            old = self.members.get(r.name)
            if old is None:
                if r.state in ("dead", "left"):
                    self.members[r.name] = replace(r, changed=now)
                    continue
                self.members[r.name] = replace(r, changed=now)
                events.append(Event("joined", r.name, r.addr))
                continue
            if outranks(r, old):
                # A new incarnation (restart) brings fresh meta with a counter that may
                # have restarted; within one incarnation the higher meta version wins.
                keep_old = (r.incarnation == old.incarnation
                            and old.meta_version > r.meta_version)
                self.members[r.name] = replace(r, changed=now, seen=old.seen,
                                               meta=old.meta if keep_old else r.meta,
                                               meta_version=old.meta_version if keep_old
                                               else r.meta_version)
                if r.state != old.state:
                    events.append(Event(r.state, r.name, f"incarnation {r.incarnation}"))
            elif r.meta_version > old.meta_version and r.incarnation == old.incarnation:
                self.members[r.name] = replace(old, meta=r.meta, meta_version=r.meta_version)
                events.append(Event("meta", r.name))
        return events

    def _about_me(self, r: Member) -> list[Event]:
        if r.state in ("suspect", "dead") and r.incarnation >= self.me.incarnation:
            self.me = replace(self.me, incarnation=r.incarnation + 1, state="alive")
            self.lhm = min(MAX_LHM, self.lhm + 1)  # being suspected hints we are slow
            return [Event("refuted", self.me.name, f"now incarnation {self.me.incarnation}")]
        return []

    def heard_from(self, name: str, now: float) -> None:
        m = self.members.get(name)
        if m is not None:
            self.members[name] = replace(m, seen=now)

    # --- failure detection ------------------------------------------------------------

    def probe_target(self) -> Member | None:
        """Round-robin over a shuffled list (SWIM's bounded detection time)."""
        live = [n for n, m in self.members.items() if m.state in ("alive", "suspect")]
        if not live:
            return None
        self._probe_order = [n for n in self._probe_order if n in live]
        if not self._probe_order:
            self._probe_order = live[:]
            self.rng.shuffle(self._probe_order)
        return self.members[self._probe_order.pop()]

    def helpers(self, target: str, k: int) -> list[Member]:
        cands = [m for n, m in self.members.items() if n != target and m.state == "alive"]
        return self.rng.sample(cands, min(k, len(cands)))

    def gossip_targets(self, fanout: int) -> list[Member]:
        cands = [m for m in self.members.values() if m.state in ("alive", "suspect")]
        return self.rng.sample(cands, min(fanout, len(cands)))

    def probe_ok(self, name: str, now: float) -> list[Event]:
        self.lhm = max(0, self.lhm - 1)
        self.heard_from(name, now)
        return []

    def probe_failed(self, name: str, now: float) -> list[Event]:
        self.lhm = min(MAX_LHM, self.lhm + 1)
        m = self.members.get(name)
        if m is None or m.state != "alive":
            return []
        self.members[name] = replace(m, state="suspect", changed=now)
        return [Event("suspect", name, "no direct or indirect ack")]

    def suspicion_timeout(self, interval: float, mult: float = 5.0,
                          floor: float = 1.5) -> float:
        """mult * log10(n) rounds, but never under `floor` seconds: a suspect must have
        time to hear of it and refute across a lossy link, whatever the round length."""
        n = len(self.members) + 1
        return max(floor, mult * max(1.0, math.log10(n + 1)) * interval) * (1 + self.lhm)

    def probe_timeout(self, base: float) -> float:
        return base * (1 + self.lhm)

    def expire(self, now: float, interval: float) -> list[Event]:
        events = []
        limit = self.suspicion_timeout(interval)
        for n, m in list(self.members.items()):
            if m.state == "suspect" and now - m.changed > limit:
                self.members[n] = replace(m, state="dead", changed=now)
                events.append(Event("dead", n, f"suspect for {now - m.changed:.1f}s"))
        return events

    # --- own record -------------------------------------------------------------------

    def set_meta(self, meta: dict[str, Any]) -> None:
        if meta != self.me.meta:
            self.me = replace(self.me, meta=meta, meta_version=self.me.meta_version + 1)

    def leave(self) -> None:
        self.me = replace(self.me, state="left", incarnation=self.me.incarnation + 1)

    def digest(self) -> list[dict[str, Any]]:
        return [self.me.wire()] + [m.wire() for m in self.members.values()]
