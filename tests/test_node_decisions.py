"""The node's pure decisions (agent/node/decisions.py) and the typed member record
(agent/gossip/member.py), as tables."""

from __future__ import annotations

import pytest

from agent.desired.authority import LatentView, PrimaryView
from agent.desired.model import NodeShare
from agent.gossip.member import MemberView, PeerMeta, RaftMeta
from agent.gossip.swim import Member
from agent.node.decisions import (
    committed_share,
    gossip_primary,
    latent_view,
    leader_raft_members,
    placement_seen,
    pull_placement_from,
    pull_state_from,
    raft_peers,
    sclerotium_in_reach,
    seed_bootstrap,
)
from agent.raft.membership import Peer


def mv(name: str, state: str = "alive", version: int = 0, role: str = "rhizomorph",
       raft: str = "", leader: bool = False, rpv: int = 0, pv: int = 0,
       members: tuple[str, ...] | None = None, status: str = "ok") -> MemberView:
    return MemberView(name, f"10.0.0.{name[-1]}:7000", state, 1,
                      PeerMeta(role, version, "", {"status": status}, "", pv,
                               RaftMeta(raft, leader, rpv, members)))


A, B, C = mv("n1", version=3), mv("n2", version=5), mv("n3", "dead", version=9)
S1 = mv("n4", version=4, role="sclerotium", raft="r4", rpv=2, pv=2)
S2 = mv("n5", version=6, role="sclerotium", raft="r5", leader=True, rpv=3, pv=3,
        members=("r4", "r5"))


@pytest.mark.parametrize("members, registry, want", [
    ([], (), PrimaryView()),
    ([A, B, C], (), PrimaryView()),  # no Raft side in gossip: unreachable
    ([A, S1], ("x",), PrimaryView(True, False, False, 4, ("x",), 2)),  # no leader: no quorum
    ([A, S1, S2], (), PrimaryView(True, False, True, 6, (), 3)),
    ([A, mv("n5", "dead", 9, raft="r5", leader=True, rpv=7)], (), PrimaryView()),
])
def test_gossip_primary(members, registry, want):
    assert gossip_primary(members, registry) == want


@pytest.mark.parametrize("members, want", [
    ([], LatentView()),
    ([B, A, C], LatentView(5, ("n1", "n2"))),  # the dead one neither votes nor counts
])
def test_latent_view(members, want):
    assert latent_view(members) == want


@pytest.mark.parametrize("peers, held, want", [
    ([], 0, None),
    ([A, B], 4, "n2"),
    ([A, B], 5, None),  # nothing newer
    ([A, B, C], 5, None),  # the newest is dead
    ([mv("n7", "suspect", 9), A], 0, "n1"),  # only alive peers are pulled from
])
def test_pull_state_from(peers, held, want):
    got = pull_state_from(peers, held)
    assert (got.name if got else None) == want


@pytest.mark.parametrize("peers, pv, want", [
    ([mv("n1", pv=9)], 0, None),  # not a sclerotium: its pv is its own placement
    ([S1, S2], 0, "n5"),
    ([S1, S2], 3, None),
    ([S1, mv("n5", "dead", raft="r5", pv=8)], 1, "n4"),  # acts on pv, not raft pv
])
def test_pull_placement_from(peers, pv, want):
    got = pull_placement_from(peers, pv)
    assert (got.name if got else None) == want


@pytest.mark.parametrize("members, want", [
    ([A, B], False), ([A, S1], True), ([mv("n4", "dead", raft="r4")], False)])
def test_sclerotium_in_reach(members, want):
    assert sclerotium_in_reach(members) is want


@pytest.mark.parametrize("members, dynamic, dead_since, want, want_dead", [
    # this node is skipped; the others as gossip shows them
    ([mv("me"), A, mv("n2", status="failed")], {}, {},
     [Peer("n1", "rhizomorph", True), Peer("n2", "rhizomorph", True, healthy=False)], {}),
    # a dead one keeps its first-seen-dead time; a live one forgets it
    ([mv("n1", "dead"), B], {}, {"n1": 40.0, "n2": 10.0},
     [Peer("n1", "rhizomorph", False, dead_for=60.0), Peer("n2", "rhizomorph", True)],
     {"n1": 40.0}),
    # a promoted member's Raft address comes from the Primary until it gossips one
    ([mv("n1")], {"n1": "r1"}, {}, [Peer("n1", "rhizomorph", True, "r1", dynamic=True)], {}),
    # a promoted member gossip has forgotten is dead from now on
    ([], {"n9": "r9", "me": "r0"}, {},
     [Peer("n9", "rhizomorph", False, "r9", dynamic=True, dead_for=0.0)], {"n9": 100.0}),
])
def test_raft_peers(members, dynamic, dead_since, want, want_dead):
    assert raft_peers(members, "me", dynamic, dead_since, 100.0) == (want, want_dead)


@pytest.mark.parametrize("members, want", [
    ([A, S1], None),
    ([A, S1, S2], ["r4", "r5"]),
    ([mv("n5", "dead", raft="r5", leader=True, members=("r5",))], None),
    ([mv("n5", raft="r5", leader=True, members=())], None),
])
def test_leader_raft_members(members, want):
    assert leader_raft_members(members) == want


def test_seed_bootstrap_lists_known_raft_members_by_agent_address():
    assert seed_bootstrap([A, S1, S2], ["r5", "r4", "r9"]) == ["10.0.0.4:7000",
                                                               "10.0.0.5:7000"]


@pytest.mark.parametrize("members, want", [
    ([], {"me": ("sclerotium", "10.1.1.1")}),  # this node, whatever gossip says
    ([A, mv("n2", "suspect"), C], {"n1": ("rhizomorph", "10.0.0.1"),
                                   "n2": ("rhizomorph", "10.0.0.2"),
                                   "me": ("sclerotium", "10.1.1.1")}),
    ([mv("me", role="")], {"me": ("", "10.0.0.e")}),  # gossip's row wins when present
])
def test_placement_seen(members, want):
    assert placement_seen(members, "me", "sclerotium", "10.1.1.1:7000") == want


# --- the member record, read from the wire -------------------------------------------

@pytest.mark.parametrize("meta, want", [
    ({}, PeerMeta()),
    (None, PeerMeta()),
    ({"role": 3, "version": -1, "pv": True, "status": [], "raft": "x"}, PeerMeta()),
    ({"role": "hypha", "version": 7, "sha256": "ab", "status": {"status": "ok"}, "fp": "f",
      "pv": 2, "raft": {"addr": "h:3", "leader": 1, "pv": 4, "members": ["a", 5]}},
     PeerMeta("hypha", 7, "ab", {"status": "ok"}, "f", 2, RaftMeta("h:3", False, 4, ("a",)))),
])
def test_peer_meta_from_wire_is_tolerant(meta, want):
    assert PeerMeta.from_wire(meta) == want


@pytest.mark.parametrize("meta", [
    {"role": "sclerotium", "version": 3, "sha256": "s", "status": {"status": "ok"},
     "fp": "f", "pv": 1, "raft": {"addr": "h:9", "leader": True, "pv": 1,
                                  "members": ["h:9"]}},
    {"role": "hypha", "version": 0, "sha256": "", "status": {}, "fp": "", "pv": 0},
])
def test_peer_meta_round_trip(meta):
    assert PeerMeta.from_wire(meta).to_wire() == meta


def test_member_row_round_trip():
    m = Member("n1", "h:1", 4, "suspect", {"role": "hypha", "version": 2,
                                            "raft": {"addr": "h:3", "leader": False, "pv": 0}})
    row = MemberView.from_member(m, 12.5).to_row()
    assert row == {"name": "n1", "addr": "h:1", "state": "suspect", "incarnation": 4,
                   "role": "hypha", "version": 2, "sha256": "", "status": {},
                   "raft": {"addr": "h:3", "leader": False, "pv": 0}, "fp": "", "pv": 0,
                   "last_seen": 12.5}
    assert MemberView.from_row(row) == MemberView.from_member(m, 12.5)


def test_committed_share_of_a_node_left_out_still_applies_the_node_wide_parts():
    placed = {"n1": NodeShare("n1", endomycetes=("web",), placement_version=4)}
    assert committed_share(placed, 4, "n1", "sclerotium") is placed["n1"]
    # n2 was not live when the leader placed: no workloads, but a share (so a plan: users,
    # base, agent), not None (no plan at all: issue 12 §4, the boot test's missing user)
    assert committed_share(placed, 4, "n2", "rhizomorph") == \
        NodeShare("n2", placement_version=4, role="rhizomorph")


def test_release_meta_rides_in_gossip_and_rows():
    from agent.gossip.member import ReleaseMeta

    meta = {"role": "rhizomorph", "version": 1, "sha256": "", "status": {}, "fp": "", "pv": 0,
            "rel": {"run": "a" * 64, "v": "0.2.0", "held": ["a" * 64, "b" * 64]}}
    pm = PeerMeta.from_wire(meta)
    assert pm.release == ReleaseMeta("a" * 64, "0.2.0", ("a" * 64, "b" * 64))
    assert pm.to_wire() == meta
    assert PeerMeta.from_wire({**meta, "rel": {"held": "x", "run": 5}}).release == ReleaseMeta()
    row = MemberView("n1", "h:1", "alive", 1, pm).to_row()
    assert MemberView.from_row(row).meta.release == pm.release
