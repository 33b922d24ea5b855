"""A node's membership table: name -> Member, with what a SWIM round needs in O(1).

Pure data structure (no I/O, no clock). Rules:
- A round finds random live members, the next member to probe and the suspects to expire
  without scanning the table, so a round costs the same at 10 or 10,000 members. Random
  picks are drawn from the list of known names and rejected when not live; only when
  almost nothing is live does a pick fall back to one scan.
- The probe order is a fresh random permutation each cycle (a random start and a random
  step coprime with the number of names): every member is probed once per cycle, as in
  SWIM's round robin, and the order costs no memory.
- The table keeps a digest of itself: a 64-bit hash of each record's ranked part (name,
  incarnation, state, meta version) XORed into FINE buckets chosen by the name's hash, and
  into a total. Two tables with the same total hold the same records (up to 2^-64); when
  totals differ, the bucket sums, folded to fewer buckets, say where. Updated per change,
  never recomputed per round.
- A table may start from a shared read-only snapshot (copy on write): a simulation of
  10,000 nodes keeps one copy of the membership it pre-seeds instead of 10^8 entries. A
  name is removed only by a tombstone (a node's own record in a shared snapshot).
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from agent.gossip.record import Member

FINE = 1024  # buckets kept; a digest exchange folds them to fewer (a power of two)
LIVE = ("alive", "suspect")


def name_bucket(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") % FINE


def record_hash(m: Member) -> int:
    """What two nodes must agree on about a member: its ranked part, not local times."""
    part = f"{m.name}\0{m.incarnation}\0{m.state}\0{m.meta_version}".encode()
    return int.from_bytes(hashlib.blake2b(part, digest_size=8).digest(), "big")


def buckets_for(n: int) -> int:
    """Buckets a digest exchange compares at n members: about sqrt(16 n), a power of two,
    so sums sent and entries sent for one differing bucket cost about the same."""
    want = math.sqrt(16 * max(1, n))
    return min(FINE, 1 << max(0, math.ceil(math.log2(want))))


def fold(sums: array, nb: int) -> list[int]:
    """FINE bucket sums folded to nb buckets (nb a power of two dividing FINE)."""
    out = [0] * nb
    for i, s in enumerate(sums):
        out[i % nb] ^= s
    return out


@dataclass(frozen=True)
class Snapshot:
    """A membership shared read-only by many tables (a simulation's pre-seeded state)."""

    records: dict[str, Member]
    names: list[str]
    sums: array
    total: int
    live: int
    suspects: frozenset[str]
    dead: frozenset[str]

    @classmethod
    def of(cls, members: list[Member]) -> Snapshot:
        sums = array("Q", bytes(8 * FINE))
        total = 0
        for m in members:
            h = record_hash(m)
            sums[name_bucket(m.name)] ^= h
            total ^= h
        return cls({m.name: m for m in members}, [m.name for m in members], sums, total,
                   sum(1 for m in members if m.state in LIVE),
                   frozenset(m.name for m in members if m.state == "suspect"),
                   frozenset(m.name for m in members if m.state == "dead"))


_EMPTY = Snapshot({}, [], array("Q", bytes(8 * FINE)), 0, 0, frozenset(), frozenset())


class Table(Mapping[str, Member]):
    def __init__(self, base: Snapshot = _EMPTY) -> None:
        self._base = base
        self._own: dict[str, Member | None] = {}  # changes over the base; None: removed
        self._names: list[str] = []  # names not in the base, in order of arrival
        self._sums: array | None = None  # None: still the base's
        self.total = base.total
        self._len = len(base.records)
        self.live = base.live  # alive or suspect
        self.suspects: set[str] = set(base.suspects)
        self.dead: set[str] = set(base.dead)
        self._walk = (0, 1, 0, 0)  # start, step, taken, names in the cycle

    # --- Mapping ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Member:
        m = self.get(name)
        if m is None:
            raise KeyError(name)
        return m

    def get(self, name: str, default: Member | None = None) -> Member | None:  # type: ignore[override]
        own = self._own
        m = own[name] if name in own else self._base.records.get(name)
        return default if m is None else m

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for name in self._base.names:
            if name not in self._own or self._own[name] is not None:
                yield name
        for name in self._names:
            if self._own.get(name) is not None:
                yield name

    # --- changes ----------------------------------------------------------------------

    def put(self, m: Member) -> None:
        old = self.get(m.name)
        if old is None:
            self._len += 1
            if m.name not in self._base.records:
                self._names.append(m.name)
        self._own[m.name] = m
        if old is None or (old.incarnation, old.state, old.meta_version) != (
                m.incarnation, m.state, m.meta_version):
            self._rehash(m.name, old, m)
            self._index(m.name, old, m)

    def remove(self, name: str) -> None:
        old = self.get(name)
        if old is not None:
            self._own[name] = None
            self._len -= 1
            self._rehash(name, old, None)
            self._index(name, old, None)

    def _rehash(self, name: str, old: Member | None, new: Member | None) -> None:
        h = (record_hash(old) if old else 0) ^ (record_hash(new) if new else 0)
        if self._sums is None:
            self._sums = array("Q", self._base.sums)
        self._sums[name_bucket(name)] ^= h
        self.total ^= h

    def _index(self, name: str, old: Member | None, new: Member | None) -> None:
        was, now = old.state if old else "", new.state if new else ""
        self.live += (now in LIVE) - (was in LIVE)
        for state, names in (("suspect", self.suspects), ("dead", self.dead)):
            if now == state:
                names.add(name)
            else:
                names.discard(name)

    # --- digest -----------------------------------------------------------------------

    @property
    def sums(self) -> array:
        return self._base.sums if self._sums is None else self._sums

    def in_buckets(self, nb: int, wanted: set[int]) -> list[Member]:
        """Records whose bucket, folded to nb, is wanted: one scan, run only when two
        digests differ."""
        return [m for m in self.values() if name_bucket(m.name) % nb in wanted]

    # --- picking members --------------------------------------------------------------

    def _name_at(self, i: int) -> str:
        base = self._base.names
        return base[i] if i < len(base) else self._names[i - len(base)]

    def _count(self) -> int:
        return len(self._base.names) + len(self._names)

    def sample(self, rng: random.Random, k: int, states: tuple[str, ...] = LIVE,
               exclude: str = "") -> list[Member]:
        """Up to k distinct members in `states`, at random."""
        total = self._count()
        if k <= 0 or total == 0:
            return []
        picked: dict[str, Member] = {}
        for _ in range(8 * k + 8):
            m = self.get(self._name_at(rng.randrange(total)))
            if m is not None and m.state in states and m.name != exclude:
                picked[m.name] = m
                if len(picked) == k:
                    return list(picked.values())
        # mostly not live: one scan finds the rest
        rest = [m for m in self.values() if m.state in states and m.name != exclude
                and m.name not in picked]
        return list(picked.values()) + rng.sample(rest, min(k - len(picked), len(rest)))

    def next_probe(self, rng: random.Random) -> Member | None:
        """The next live member in this cycle's permutation of the names."""
        if self.live == 0:
            return None
        for _ in range(2 * self._count() + 2):
            start, step, taken, total = self._walk
            if taken >= total or total != self._count():
                total = self._count()
                step = rng.randrange(1, total) if total > 1 else 1
                while math.gcd(step, total) != 1:
                    step = rng.randrange(1, total)
                start, taken = rng.randrange(total), 0
            self._walk = (start, step, taken + 1, total)
            m = self.get(self._name_at((start + taken * step) % total))
            if m is not None and m.state in LIVE:
                return m
        return None
