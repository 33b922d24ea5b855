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
- Lifeguard local health (LHM 0..8) rises when we have to refute, or when a probe fails
  and no helper answered either (had one answered "nack", the network around us works and
  the fault is the target's), and falls on success. Probe timeouts stretch by (1 + LHM);
  a suspicion's timeout stretches by (1 + the LHM we had when it began), fixed from then
  on: a starved node slows down instead of accusing healthy peers, and a node whose only
  peer died does not keep stretching the death it is waiting for.
- Meta (role, held state version, convergence) is owned by its node and carries its own
  version; the higher meta version wins.
- A record may carry its node's proof (agent/trust/records.py) over what the node said
  about itself; the proof travels with the fields it signed and never ranks a record.
- Anti-entropy compares digests, not tables: one number for everything a node believes
  (its own record included), then bucket sums, then only the differing buckets' records
  (agent/gossip/table.py). It runs every `sync_period` rounds, which grows with log2 of
  the network's size. A peer's stamp of us (what it believes our record is) that is behind
  sends our record back; one that says we are suspect or dead at our current incarnation
  makes us refute, exactly as a relayed rumour would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

from agent.gossip.record import RANK, Member
from agent.gossip.table import Snapshot, Table, fold, name_bucket, record_hash
from agent.tuning import MAX_LHM, SUSPICION_FLOOR, SUSPICION_MULT


def outranks(new: Member, old: Member) -> bool:
    if new.incarnation != old.incarnation:
        return new.incarnation > old.incarnation
    return RANK[new.state] > RANK[old.state]


@dataclass
class Event:
    kind: str  # joined | alive | suspect | dead | left | refuted | meta (a new record in
    # the same state: new meta or a new incarnation) (or a report:
    # error | forged | refused, from the I/O shell)
    name: str
    detail: str = ""


def sync_period(every: int, n: int) -> int:
    """Rounds between anti-entropy exchanges at n members: `every` up to 32 members, then
    one more multiple of it per doubling (memberlist's push-pull scale), so the network's
    total anti-entropy traffic grows as n log n, not n^2."""
    if n <= 32:
        return every
    return every * (math.ceil(math.log2(n) - 5) + 1)


class Membership:
    def __init__(self, me: Member, seed: int | None = None,
                 snapshot: Snapshot | None = None) -> None:
        self.me = me
        self.members = Table(snapshot) if snapshot is not None else Table()
        self.members.remove(me.name)  # a shared snapshot holds everyone, us too
        self.lhm = 0
        self.rng = random.Random(seed)
        # local time we last heard from each member directly (not gossiped; kept apart
        # from the records, so hearing from a member changes no record)
        self.seen: dict[str, float] = {}
        # suspect -> our LHM when its suspicion began (fixes its timeout)
        self.suspected_at_lhm: dict[str, int] = {}

    # --- merging what others say ------------------------------------------------------

    def merge(self, records: list[Member], now: float) -> list[Event]:
        events: list[Event] = []
        put = self.members.put
        for r in records:
            if r.name == self.me.name:
                events += self._about_me(r)
                continue
            old = self.members.get(r.name)
            if old is None:
                put(replace(r, changed=now))
                if r.state not in ("dead", "left"):
                    events.append(Event("joined", r.name, r.addr))
                continue
            if outranks(r, old):
                # A new incarnation (restart) brings fresh meta with a counter that may
                # have restarted; within one incarnation the higher meta version wins
                # (and the proof goes with the meta it signed).
                keep_old = (r.incarnation == old.incarnation
                            and old.meta_version > r.meta_version)
                put(replace(r, changed=now, **(
                    {"meta": old.meta, "meta_version": old.meta_version, "proof": old.proof,
                     "cert": old.cert} if keep_old else {})))
                if r.state != old.state:
                    events.append(Event(r.state, r.name, f"incarnation {r.incarnation}"))
                else:  # a restart or a refutation we had not doubted: relay it all the same
                    events.append(Event("meta", r.name, f"incarnation {r.incarnation}"))
            elif r.meta_version > old.meta_version and r.incarnation == old.incarnation:
                put(replace(old, meta=r.meta, meta_version=r.meta_version, proof=r.proof,
                            cert=r.cert))
                events.append(Event("meta", r.name))
        return events

    def _about_me(self, r: Member) -> list[Event]:
        if r.state in ("suspect", "dead") and r.incarnation >= self.me.incarnation:
            self.me = replace(self.me, incarnation=r.incarnation + 1, state="alive")
            self.lhm = min(MAX_LHM, self.lhm + 1)  # being suspected hints we are slow
            return [Event("refuted", self.me.name, f"now incarnation {self.me.incarnation}")]
        return []

    def heard_from(self, name: str, now: float) -> None:
        if name in self.members:
            self.seen[name] = now

    # --- failure detection ------------------------------------------------------------

    def probe_target(self) -> Member | None:
        """Round-robin over a random permutation (SWIM's bounded detection time)."""
        return self.members.next_probe(self.rng)

    def helpers(self, target: str, k: int) -> list[Member]:
        return self.members.sample(self.rng, k, ("alive",), exclude=target)

    def gossip_targets(self, fanout: int) -> list[Member]:
        return self.members.sample(self.rng, fanout)

    def any_live(self) -> bool:
        return self.members.live > 0

    def a_dead_member(self) -> Member | None:
        dead = self.members.dead
        return self.members[self.rng.choice(tuple(dead))] if dead else None

    def probe_ok(self, name: str, now: float) -> list[Event]:
        self.lhm = max(0, self.lhm - 1)
        self.heard_from(name, now)
        return []

    def probe_failed(self, name: str, now: float, helper_answered: bool = False) -> list[Event]:
        """`helper_answered`: a helper replied to our ping-req (a nack), so our own
        requests get through and the silence is the target's, not a sign we are slow."""
        lhm, m = self.lhm, self.members.get(name)
        if not helper_answered:
            self.lhm = min(MAX_LHM, self.lhm + 1)
        if m is None or m.state != "alive":
            return []
        self.members.put(replace(m, state="suspect", changed=now))
        self.suspected_at_lhm[name] = lhm
        return [Event("suspect", name, "no direct or indirect ack")]

    def suspicion_timeout(self, interval: float, mult: float = SUSPICION_MULT,
                          floor: float = SUSPICION_FLOOR, lhm: int | None = None) -> float:
        """mult * log10(n) rounds, but never under `floor` seconds: a suspect must have
        time to hear of it and refute across a lossy link, whatever the round length.
        Stretched by 1 + `lhm` (our current LHM unless given)."""
        n = len(self.members) + 1
        return (max(floor, mult * max(1.0, math.log10(n + 1)) * interval)
                * (1 + (self.lhm if lhm is None else lhm)))

    def probe_timeout(self, base: float) -> float:
        return base * (1 + self.lhm)

    def expire(self, now: float, interval: float) -> list[Event]:
        """Suspects past the timeout become dead (only the suspects are looked at)."""
        events: list[Event] = []
        suspects, began = self.members.suspects, self.suspected_at_lhm
        for n in [n for n in began if n not in suspects]:  # refuted or dead since
            del began[n]
        for n in list(suspects):
            m = self.members[n]
            # a suspicion gossiped to us starts at the LHM we have on first seeing it
            limit = self.suspicion_timeout(interval, lhm=began.setdefault(n, self.lhm))
            if now - m.changed > limit:
                self.members.put(replace(m, state="dead", changed=now))
                events.append(Event("dead", n, f"suspect for {now - m.changed:.1f}s"))
        return events

    # --- own record -------------------------------------------------------------------

    def set_meta(self, meta: dict[str, Any]) -> bool:
        """New meta is a new meta version; True when it changed."""
        if meta == self.me.meta:
            return False
        self.me = replace(self.me, meta=meta, meta_version=self.me.meta_version + 1)
        return True

    def leave(self) -> None:
        self.me = replace(self.me, state="left", incarnation=self.me.incarnation + 1)

    # --- anti-entropy digest (the table's, with our own record in it) -----------------

    def digest(self) -> int:
        """One number for everything this node believes, itself included."""
        return self.members.total ^ record_hash(self.me)

    def bucket_sums(self, nb: int) -> list[int]:
        sums = fold(self.members.sums, nb)
        sums[name_bucket(self.me.name) % nb] ^= record_hash(self.me)
        return sums

    def in_buckets(self, nb: int, wanted: set[int]) -> list[Member]:
        """Our records (ours first) whose bucket is wanted: run only when digests differ."""
        mine = [self.me] if name_bucket(self.me.name) % nb in wanted else []
        return mine + self.members.in_buckets(nb, wanted)

    def stale(self, stamp: Stamp | None) -> bool:
        """Whether a peer's stamp of us (what it believes we are) is behind our record."""
        return stamp != Stamp.of(self.me)

    def rumour(self, stamp: Stamp) -> list[Event]:
        """A peer believes us suspect or dead at our current incarnation (which we signed):
        refute, as for a relayed rumour. A stamp at any other incarnation is ignored, so
        a stamp cannot raise our incarnation beyond what a signed rumour could."""
        if stamp.incarnation != self.me.incarnation or stamp.state not in ("suspect", "dead"):
            return []
        return self._about_me(replace(self.me, state=stamp.state))


@dataclass(frozen=True)
class Stamp:
    """What a sender believes about the receiver, in a few bytes: enough for the receiver
    to tell that its own record should travel back (or that it must refute)."""

    incarnation: int
    state: str
    meta_version: int

    @classmethod
    def of(cls, m: Member) -> Stamp:
        return cls(m.incarnation, m.state, m.meta_version)
