"""Authority order Primary > Seed > Latent: which state, membership and placement a node
acts on when its sources disagree. Pure: the caller says what each source reported.

- State: the highest version among sources that verified (every source's envelope passed
  agent/trust/rules.py before it got here), so a newer state is never ignored; but when the
  Primary is reachable and holds a version, nothing newer is *acted on* from gossip until
  the Primary has it, unless it came from the Seed (the operator's published copy).
- Membership: the Primary's registry if reachable, else the Seed's bootstrap list plus
  gossip, else gossip alone.
- Placement: only the Raft leader may change it; a node that cannot reach a Primary
  majority keeps its last placement and makes no new one (read-only minority).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PrimaryView:
    reachable: bool = False
    is_leader: bool = False
    has_quorum: bool = False
    version: int = 0
    members: tuple[str, ...] = ()
    placement_version: int = 0


@dataclass(frozen=True)
class SeedView:
    reachable: bool = False
    version: int = 0
    bootstrap: tuple[str, ...] = ()


@dataclass(frozen=True)
class LatentView:
    version: int = 0
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    state_source: str  # primary | seed | latent | none
    state_version: int
    members: tuple[str, ...]
    members_source: str
    may_place: bool
    keep_placement: int  # the placement version to keep acting on
    notes: tuple[str, ...] = field(default_factory=tuple)


def decide(primary: PrimaryView, seed: SeedView, latent: LatentView,
           last_placement: int = 0) -> Decision:
    notes = []
    if primary.reachable and primary.has_quorum:
        version, source = primary.version, "primary"
        if seed.reachable and seed.version > version:
            version, source = seed.version, "seed"
            notes.append("seed is newer than the primary: act on it and propose it")
        elif latent.version > version:
            notes.append("gossip reports a newer state than the primary: wait for its commit")
        members, msrc = primary.members, "primary"
    else:
        candidates = [(seed.version, "seed")] if seed.reachable else []
        candidates.append((latent.version, "latent"))
        version, source = max(candidates, key=lambda c: (c[0], c[1] == "seed"))
        if version == 0:
            source = "none"
        if seed.reachable:
            members = tuple(dict.fromkeys(seed.bootstrap + latent.members))
            msrc = "seed+latent"
        else:
            members, msrc = latent.members, "latent"
        notes.append("no primary majority: placement is read-only")
    may_place = primary.reachable and primary.has_quorum and primary.is_leader
    keep = primary.placement_version if primary.reachable and primary.has_quorum \
        else last_placement
    return Decision(source, version, members, msrc, may_place, keep, tuple(notes))
