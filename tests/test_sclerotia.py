"""The leader's next Raft membership change (agent/raft/membership.py), table-driven."""

from __future__ import annotations

import pytest

from agent.raft.membership import Change, Peer, next_change, raft_addr

L = "10.0.0.1:7948"  # the leader's Raft address


def scl(name: str, n: int, alive: bool = True, raft: bool = True) -> Peer:
    return Peer(name, "sclerotium", alive, f"10.0.0.{n}:7948" if raft else "")


def rhizo(name: str, n: int, alive: bool = True, raft: bool = False, healthy: bool = True,
          dynamic: bool = False, dead_for: float = 0.0) -> Peer:
    return Peer(name, "rhizomorph", alive, f"10.0.0.{n}:7948" if raft else "", healthy,
                dynamic, dead_for)


CASES = [
    ("at target: nothing",
     [scl("b", 2), scl("c", 3), rhizo("r", 4)], [L, "10.0.0.2:7948", "10.0.0.3:7948"], 3,
     None),
    ("a dedicated sclerotium running Raft but not a member is added",
     [scl("b", 2), scl("c", 3)], [L, "10.0.0.2:7948"], 3, Change("add", "c", "10.0.0.3:7948")),
    ("joining comes before promoting",
     [scl("b", 2), rhizo("r", 4)], [L], 3, Change("add", "b", "10.0.0.2:7948")),
    ("below target: the healthy rhizomorph is promoted, not the failing one",
     [scl("b", 2), rhizo("a", 4, healthy=False), rhizo("r", 5)], [L, "10.0.0.2:7948"], 3,
     Change("promote", "r")),
    ("a dead member does not count",
     [scl("b", 2), scl("c", 3, alive=False), rhizo("r", 4)],
     [L, "10.0.0.2:7948", "10.0.0.3:7948"], 3, Change("promote", "r")),
    ("a dead rhizomorph and a hypha are never promoted",
     [scl("b", 2), rhizo("r", 4, alive=False), Peer("h", "hypha", True)], [L, "10.0.0.2:7948"],
     3, None),
    ("a promotion still starting counts: no second promotion",
     [scl("b", 2), rhizo("r", 4, dynamic=True), rhizo("s", 5)], [L, "10.0.0.2:7948"], 3, None),
    ("the promoted node now runs Raft: it is added",
     [scl("b", 2), rhizo("r", 4, raft=True, dynamic=True)], [L, "10.0.0.2:7948"], 3,
     Change("add", "r", "10.0.0.4:7948")),
    ("above target: a dynamic member is demoted",
     [scl("b", 2), scl("c", 3), rhizo("r", 4, raft=True, dynamic=True)],
     [L, "10.0.0.2:7948", "10.0.0.3:7948", "10.0.0.4:7948"], 3,
     Change("demote", "r", "10.0.0.4:7948")),
    ("above target with only dedicated members: nothing",
     [scl("b", 2), scl("c", 3), scl("d", 5)],
     [L, "10.0.0.2:7948", "10.0.0.3:7948", "10.0.0.5:7948"], 3, None),
    ("a demoted node still running Raft is told to stop",
     [scl("b", 2), rhizo("r", 4, raft=True)], [L, "10.0.0.2:7948"], 2,
     Change("stop", "r", "10.0.0.4:7948")),
    ("a dynamic member dead past the grace period is removed before anyone is promoted",
     [scl("b", 2), rhizo("r", 4, alive=False, raft=True, dynamic=True, dead_for=61),
      rhizo("s", 5)], [L, "10.0.0.2:7948", "10.0.0.4:7948"], 3,
     Change("remove", "r", "10.0.0.4:7948")),
    ("a dynamic member dead only briefly stays a member; a replacement is promoted",
     [scl("b", 2), rhizo("r", 4, alive=False, raft=True, dynamic=True, dead_for=5),
      rhizo("s", 5)], [L, "10.0.0.2:7948", "10.0.0.4:7948"], 3, Change("promote", "s")),
    ("a dead dedicated sclerotium is never removed",
     [scl("b", 2), Peer("c", "sclerotium", False, "10.0.0.3:7948", dead_for=3600)],
     [L, "10.0.0.2:7948", "10.0.0.3:7948"], 3, None),
    ("no state yet (target 0): only joins",
     [scl("b", 2), rhizo("r", 4)], [L, "10.0.0.2:7948"], 0, None),
]


@pytest.mark.parametrize("peers,members,target,want", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_next_change(peers, members, target, want):
    assert next_change(peers, members, L, target) == want


def test_leader_is_never_demoted():
    members = [L, "10.0.0.2:7948", "10.0.0.3:7948", "10.0.0.4:7948"]
    peers = [scl("b", 2), scl("c", 3), scl("d", 4)]
    # the leader itself is the only dynamic member (it is not in `peers`)
    assert next_change(peers, members, L, 3) is None


def test_raft_addr_is_two_above_the_api():
    assert raft_addr("10.0.0.1:7946") == "10.0.0.1:7948"
    assert raft_addr("[::1]:7000") == "[::1]:7002"
