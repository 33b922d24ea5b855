"""`mycelium vm migrate` without QEMU: the move rule (agent/desired/moves.py), the CLI's
plan and refusals from the nodes' replies (agent/authoring/migrate.py), and parsing."""

from __future__ import annotations

import pytest

from agent.authoring.migrate import Plan, leaders_first, pause_of, plan_move
from agent.cli import build_parser
from agent.desired.model import DesiredState, Endophyte, NodeShare
from agent.desired.moves import MoveError, move, vm_hosts
from agent.errors import ConfigError

STATE = DesiredState("n", endophytes=(Endophyte("vm", kernel="k", backups=1),
                                      Endophyte("two", kernel="k", backups=2),
                                      Endophyte("disk", image="i", backups=1)))
REPLICATED = frozenset({"vm", "two"})
PLACED = {
    "n1": NodeShare("n1", endophytes_primary=("vm",), endophytes_backup=("two",)),
    "n2": NodeShare("n2", endophytes_backup=("vm",), endophytes_primary=("two",)),
    "n3": NodeShare("n3", endophytes_backup=("two",), endophytes_primary=("disk",)),
    "n4": NodeShare("n4"),
}
LIVE = {"n1", "n2", "n3", "n4"}


def hosts(p: dict[str, NodeShare], vm: str) -> tuple[str | None, list[str]]:
    return vm_hosts(p, vm)


@pytest.mark.parametrize("vm, to, role, want", [
    ("vm", "n2", "primary", ("n2", ["n1"])),  # the swap of a planned migration
    ("vm", "n3", "backup", ("n1", ["n3"])),  # the last backup gives its seat up
    ("vm", "n4", "backup", ("n1", ["n4"])),
    ("two", "n1", "primary", ("n1", ["n2", "n3"])),
    ("two", "n4", "backup", ("n2", ["n1", "n4"])),  # n3, last by name, leaves
])
def test_a_move_changes_only_that_vm(vm, to, role, want):
    after = move(STATE, PLACED, LIVE, vm, to, role, 9, REPLICATED)
    assert hosts(after, vm) == want
    for other in {"vm", "two", "disk"} - {vm}:
        assert hosts(after, other) == hosts(PLACED, other)
    assert {s.placement_version for s in after.values()} == {9}


def test_a_backup_is_added_where_fewer_than_asked_are_placed():
    short = {**PLACED, "n3": NodeShare("n3")}  # "two" lost a backup
    assert hosts(move(STATE, short, LIVE, "two", "n4", "backup", 2, REPLICATED), "two") \
        == ("n2", ["n1", "n4"])


@pytest.mark.parametrize("vm, to, role, why", [
    ("nope", "n2", "primary", "no VM nope in the state"),
    ("disk", "n1", "primary", "VM disk is not replicated"),
    ("vm", "n9", "primary", "node n9 is not a live member"),
    ("vm", "n1", "primary", "VM vm already runs on n1"),
    ("vm", "n1", "backup", "VM vm already runs on n1"),
    ("vm", "n4", "primary", "node n4 is not a backup of VM vm: make it one first"),
    ("vm", "n2", "backup", "node n2 is already a backup of VM vm"),
])
def test_moves_that_are_refused_say_why(vm, to, role, why):
    with pytest.raises(MoveError, match=why):
        move(STATE, PLACED, LIVE, vm, to, role, 9, REPLICATED)


def test_a_dead_target_is_refused():
    with pytest.raises(MoveError, match="n2 is not a live member"):
        move(STATE, PLACED, LIVE - {"n2"}, "vm", "n2", "primary", 9, REPLICATED)


def test_the_next_placement_keeps_a_committed_move():
    """The leader's placement (agent/desired/placement.py) keeps what is still valid, so
    a swap stays as committed instead of springing back at the next tick."""
    from agent.desired.placement import LiveMember, place

    live = [LiveMember(n, "rhizomorph", runtime="podman") for n in sorted(LIVE)]
    first = place(STATE, live, version=1)
    p, (b, *_) = hosts(first, "vm")
    assert p is not None
    swapped = move(STATE, first, LIVE, "vm", b, "primary", 2, REPLICATED)
    again = place(STATE, live, swapped, version=3)
    assert hosts(again, "vm") == (b, [p])


def reply(node: str, vms=(), backups=(), error: str = "") -> dict:
    r = {"node": node, "addr": f"127.0.0.1:{node[-1]}"}
    return {**r, "error": error} if error else {**r, "vms": list(vms), "backups": list(backups)}


RUNNING = {"name": "vm", "state": "running",
           "replication": {"seq": 3, "acked": {"127.0.0.1:2": 3}}}
REPLIES = [reply("n1", [RUNNING]),
           reply("n2", backups=[{"vm": "vm", "seq": 3}]),
           reply("n3"), reply("n4", error="timed out"),
           reply("n5", backups=[{"vm": "vm", "seq": 9}])]  # placed, nothing from n1 yet


def test_the_plan_names_primary_and_target():
    assert plan_move(REPLIES, "vm", "n2") == Plan("n1", "127.0.0.1:1", "127.0.0.1:2", True,
                                                  True)
    assert plan_move(REPLIES, "vm", "n3") == Plan("n1", "127.0.0.1:1", "127.0.0.1:3", False,
                                                  False)
    assert plan_move(REPLIES, "vm", "n5") == Plan("n1", "127.0.0.1:1", "127.0.0.1:5", True,
                                                  False)
    stopping = reply("n6", [{"name": "vm", "state": "stopping"}])  # an old primary
    assert plan_move([stopping, *REPLIES], "vm", "n2").primary == "n1"


@pytest.mark.parametrize("replies, vm, to, why", [
    (REPLIES, "db", "n2", "no live node runs VM db; see `mycelium vm list`"),
    (REPLIES, "vm", "n9", "node n9 is not a live member; see `mycelium status`"),
    (REPLIES, "vm", "n4", "node n4 cannot be asked (timed out)"),
    (REPLIES, "vm", "n1", "VM vm already runs on n1"),
    ([reply("n1", [{"name": "vm", "state": "running"}]), reply("n2")], "vm", "n2",
     "VM vm is not replicated"),
    ([reply("n1", [{**RUNNING, "state": "restarting"}]), reply("n2")], "vm", "n2",
     "VM vm is restarting on n1, not running"),
])
def test_the_cli_refuses_in_one_line(replies, vm, to, why):
    with pytest.raises(ConfigError, match=why.replace("(", r"\(").replace(")", r"\)")):
        plan_move(replies, vm, to)


def test_the_leader_is_asked_first_and_the_pause_is_measured_between_clocks():
    members = [{"name": "n1", "addr": "a1", "state": "alive", "raft": {"addr": "r1"}},
               {"name": "n2", "addr": "a2", "state": "alive", "raft": {}},
               {"name": "n3", "addr": "a3", "state": "alive",
                "raft": {"addr": "r3", "leader": True}},
               {"name": "n4", "addr": "a4", "state": "dead", "raft": {"addr": "r4"}}]
    assert leaders_first(members) == ["a3", "a1"]
    assert pause_of({"started": 100.0}, {"running_at": 101.25}) == 1.25
    assert pause_of({"started": 100.0, "stopped": 100.5}, {"running_at": 101.25}) == 0.75


def test_cli_parsing():
    args = build_parser().parse_args(["vm", "migrate", "tiny", "--to", "n3", "--nodes",
                                      "127.0.0.1:1,127.0.0.1:2"])
    assert (args.name, args.node, args.to) == ("tiny", "n3", "127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", "migrate", "tiny"])  # --to NODE is required


class FakeHypha:
    """Each address answers /primary/move as given: (status, body), or a transport error."""

    def __init__(self, answers: dict[str, tuple[int, dict] | None]) -> None:
        self.answers, self.asked = answers, []

    async def call(self, method: str, path: str, data: bytes, addr: str):
        from agent.errors import PeerError

        self.asked.append(addr)
        if self.answers[addr] is None:
            raise PeerError(f"{addr}: connection reset")
        return (addr, *self.answers[addr])


OK, NOT_LEADER = (200, {"placement_version": 7}), (421, {"error": "not the leader"})


@pytest.mark.parametrize("answers, want", [
    ({"a": OK}, 7),
    ({"a": NOT_LEADER, "b": OK}, 7),  # the leader changed: the next sclerotium
    ({"a": (409, {"error": "VM vm already runs on n1"})}, "refused: VM vm already runs"),
    ({"a": NOT_LEADER, "b": NOT_LEADER}, "no Raft leader with a majority answered"),
    # a request lost on the way: committed or not, only the placement will say
    ({"a": None, "b": NOT_LEADER}, "may or may not be committed"),
])
def test_the_commit_says_whether_the_guest_may_run_on(answers, want):
    """ConfigError (nothing changed: the CLI thaws the paused guest) vs Uncommitted (it
    must not: the placement decides where the guest runs on)."""
    import asyncio

    from agent.authoring.migrate import Uncommitted, _commit

    h = FakeHypha(answers)
    go = _commit(h, list(answers), "vm", "n2", "primary")  # type: ignore[arg-type]
    if isinstance(want, int):
        assert asyncio.run(go) == want
        return
    with pytest.raises(Uncommitted if "may or" in want else ConfigError, match=want):
        asyncio.run(go)
    assert h.asked == list(answers)[:len(h.asked)]
