from __future__ import annotations

import pytest

from agent.desired.authority import LatentView, PrimaryView, SeedView, decide

P = PrimaryView(reachable=True, has_quorum=True, version=5, members=("a", "b", "c"),
                placement_version=4)
PL = PrimaryView(reachable=True, is_leader=True, has_quorum=True, version=5,
                 members=("a", "b", "c"), placement_version=4)
NOP = PrimaryView()


@pytest.mark.parametrize("primary, seed, latent, source, version, msrc, may_place, keep", [
    # primary reachable and disagreeing with gossip: primary wins, gossip waits
    (P, SeedView(), LatentView(7, ("x",)), "primary", 5, "primary", False, 4),
    (PL, SeedView(), LatentView(3, ("x",)), "primary", 5, "primary", True, 4),
    # seed newer than primary: act on the operator's published copy
    (P, SeedView(True, 6), LatentView(), "seed", 6, "primary", False, 4),
    # primary unreachable, seed newer than gossip
    (NOP, SeedView(True, 8, ("a",)), LatentView(6, ("b",)), "seed", 8, "seed+latent", False, 2),
    # primary unreachable, gossip newer than seed
    (NOP, SeedView(True, 4, ("a",)), LatentView(6, ("b",)), "latent", 6, "seed+latent",
     False, 2),
    # all unreachable, nothing held
    (NOP, SeedView(), LatentView(), "none", 0, "latent", False, 2),
    # minority partition: primary reachable but no quorum -> read-only placement
    (PrimaryView(reachable=True, is_leader=True, has_quorum=False, version=5),
     SeedView(), LatentView(5, ("a",)), "latent", 5, "latent", False, 2),
])
def test_authority_table(primary, seed, latent, source, version, msrc, may_place, keep):
    d = decide(primary, seed, latent, last_placement=2)
    assert (d.state_source, d.state_version, d.members_source, d.may_place,
            d.keep_placement) == (source, version, msrc, may_place, keep)
