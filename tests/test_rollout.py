"""Staged rollouts: waves, the gate, failure, operator actions (pure, tables)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.desired.model import Release, RolloutPolicy
from agent.desired.rollout import (
    ABORTED,
    DONE,
    FAILED,
    PAUSED,
    ROLLED_BACK,
    RUNNING,
    NodeView,
    Progress,
    act,
    allowed,
    may_take,
    node_order,
    start,
    step,
    wave_counts,
)
from agent.desired.schema import parse_state
from agent.errors import SchemaError

NEW, OLD = "n" * 64, "o" * 64
POLICY = RolloutPolicy(("1", "50%", "all"), healthy_seconds=10, wave_deadline_seconds=100)


@pytest.mark.parametrize("waves, n, want", [
    (("1", "10%", "50%", "all"), 5, [1, 3, 5]),
    (("1", "10%", "50%", "all"), 20, [1, 2, 10, 20]),
    (("all",), 3, [3]),
    (("2",), 5, [2, 5]),  # the rest follow in a last wave
    (("1",), 1, [1]),
    (("50%", "40%", "all"), 4, [2, 4]),  # a wave that adds nobody is skipped
])
def test_wave_counts(waves, n, want):
    assert wave_counts(waves, n) == want


def test_order_is_the_same_for_every_leader_and_differs_by_release():
    names = [f"n{i}" for i in range(8)]
    assert node_order(NEW, names) == node_order(NEW, list(reversed(names)))
    assert node_order(NEW, names) != node_order(OLD, names)


def views(p: Progress, on: int, running=NEW, healthy=True, bad=()) -> dict[str, NodeView]:
    """The first `on` nodes of the order run `running`; the rest still run OLD."""
    return {n: NodeView(n, True, running if i < on else OLD, healthy, bad if i < on else ())
            for i, n in enumerate(p.order)}


def begin() -> Progress:
    nodes = [NodeView(f"n{i}", True, OLD, True) for i in range(5)]
    return start(Release("2", NEW), nodes, now=0)


def test_waves_advance_through_the_gate_to_done():
    p = begin()
    assert p.previous == OLD and allowed(p, POLICY) == p.order[:1]
    assert step(p, POLICY, views(p, 0), 5) == p  # wave 1 not updated yet: wait
    p = step(p, POLICY, views(p, 1), 5)
    assert p.healthy_since == 5 and p.wave == 0
    assert step(p, POLICY, views(p, 1), 14) == p  # healthy, but not for 10 s yet
    p = step(p, POLICY, views(p, 1), 15)
    assert (p.wave, p.wave_started) == (1, 15) and allowed(p, POLICY) == p.order[:3]
    p = step(step(p, POLICY, views(p, 3), 20), POLICY, views(p, 3), 30)
    assert p.wave == 2 and allowed(p, POLICY) == p.order
    p = step(step(p, POLICY, views(p, 5), 31), POLICY, views(p, 5), 41)
    assert p.status == DONE and may_take(p, POLICY, "latecomer", NEW)


def test_a_wave_node_going_unhealthy_restarts_the_clock():
    p = step(begin(), POLICY, views(begin(), 1), 5)
    p = step(p, POLICY, views(p, 1, healthy=False), 8)
    assert p.healthy_since == 0 and p.status == RUNNING


@pytest.mark.parametrize("auto, want", [(False, FAILED), (True, ROLLED_BACK)])
def test_a_rollback_in_the_wave_stops_the_rollout(auto, want):
    policy = RolloutPolicy(POLICY.waves, 10, 100, auto_rollback=auto)
    p = begin()
    p = step(p, policy, views(p, 1, running=OLD, bad=(NEW,)), 20)
    assert p.status == want and "rolled release 2 back" in p.reason
    assert step(p, policy, views(p, 5), 200) == p  # stopped: nothing moves
    assert not may_take(p, policy, p.order[3], NEW)


def test_a_wave_past_its_deadline_fails_naming_the_late_nodes():
    p = begin()
    p = step(p, POLICY, views(p, 0), 101)
    assert p.status == FAILED and p.reason.endswith(f"s: {p.order[0]}")


def test_operator_actions():
    p = begin()
    paused = act(p, "pause", 3)
    assert paused.status == PAUSED and step(paused, POLICY, views(p, 1), 50) == paused
    resumed = act(paused, "resume", 60)
    assert resumed.status == RUNNING and resumed.wave_started == 60
    assert act(resumed, "abort", 61).status == ABORTED
    assert allowed(act(resumed, "abort", 61), POLICY) == ()
    with pytest.raises(ValueError, match="cannot resume"):
        act(p, "resume", 1)
    seqs = [p.seq, paused.seq, resumed.seq]
    assert seqs == sorted(set(seqs))


def test_without_a_policy_every_node_takes_it_and_with_one_only_its_wave():
    p = begin()
    assert may_take(None, None, "anyone", NEW)
    assert not may_take(None, POLICY, "anyone", NEW)  # the leader has not started it
    assert may_take(p, POLICY, p.order[0], NEW) and not may_take(p, POLICY, p.order[1], NEW)
    assert Progress.from_dict(p.to_dict()) == p and Progress.from_dict({"x": 1}) is None


def test_rollout_in_network_yaml():
    s = parse_state(b"schema: 1\nnetwork: {name: n}\nrollout:\n  waves: [1, 10%, all]\n"
                    b"  auto_rollback: true\n")
    assert s.rollout == RolloutPolicy(("1", "10%", "all"), 30, 600, True)
    with pytest.raises(SchemaError) as e:
        parse_state(b"schema: 1\nnetwork: {name: n}\nrollout:\n  waves: [0, 150%, most]\n",
                    "n.yaml")
    assert [p.split(": ", 1)[0] for p in e.value.problems] == [
        "n.yaml:4:11", "n.yaml:4:14", "n.yaml:4:20"]


def test_status_shows_each_nodes_release_and_rollout_status_renders():
    from agent.views import member_rows, rollout_lines, status_frame

    members = [{"name": "n1", "role": "sclerotium", "state": "alive",
                "rel": {"run": NEW, "v": "2", "held": [NEW]}},
               {"name": "n2", "role": "rhizomorph", "state": "alive",
                "rel": {"run": "", "v": "1", "held": [], "bad": [NEW]}}]
    text = status_frame(member_rows(members), [], 0.0)
    assert text.endswith("NODE  RELEASE           HELD  ROLLED BACK\n"
                         "n1    2 (nnnnnnnnnnnn)  1     -\n"
                         "n2    1 (built-in)      0     nnnnnnnnnnnn")
    assert "RELEASE" not in status_frame(member_rows([{"name": "n1"}]), [], 0.0)
    built_in = {"name": "n1", "rel": {"run": "", "v": "0.1.0", "held": []}}
    assert "RELEASE" not in status_frame(member_rows([built_in]), [], 0.0)
    p = begin()
    view = {"release": {"version": "2", "sha256": NEW}, "policy": {
        "waves": ["1", "50%", "all"], "healthy_seconds": 10, "wave_deadline_seconds": 100,
        "auto_rollback": False}, "progress": p.to_dict(), "allowed": [p.order[0]],
        "nodes": {m["name"]: {**m["rel"], "state": "alive"} for m in members}}
    lines = rollout_lines(view)
    assert lines[:2] == [f"release 2 ({NEW[:12]})", f"rollout running: wave 1 ({p.order[0]}) "
                         "of waves 1, 50%, all; gate 10 s healthy, deadline 100 s, "
                         "auto_rollback off"]
    assert lines[-1].endswith("n2    alive  1 (built-in)      no        yes")
    assert rollout_lines({"release": None}) == [
        "network.yaml names no release: every node keeps the agent it runs"]


def test_progress_is_believed_from_sclerotia_only():
    """A rhizomorph (its role comes from its certificate) gossiping a further wave moves
    nobody; the same progress from a sclerotium does."""
    from agent.gossip.member import MemberView, PeerMeta, ReleaseMeta
    from agent.node.rollout import progress_seen

    base = Progress(NEW, "0.2.0", ("n1", "n2", "n3"), seq=3)
    ahead = Progress(NEW, "0.2.0", ("n1", "n2", "n3"), wave=2, seq=9).to_dict()

    def member(name: str, role: str, rollout: dict) -> MemberView:
        return MemberView(name, "127.0.0.1:1", "alive",
                          meta=PeerMeta(role=role, release=ReleaseMeta(rollout=rollout)))

    local = base.to_dict()
    assert progress_seen([member("r1", "rhizomorph", ahead)], local, NEW) == base
    assert progress_seen([member("h1", "hypha", ahead)], None, NEW) is None
    assert progress_seen([member("s2", "sclerotium", ahead)], local, NEW).wave == 2


def test_nodes_that_never_install_are_left_out_of_the_waves():
    """A node run without --release-root gossips `fixed`: in a wave it would hold the gate
    until the deadline, so the rollout orders only the others; the wire keeps the flag."""
    from agent.gossip.member import ReleaseMeta

    nodes = [NodeView(f"n{i}", True, OLD, True, fixed=i in (0, 3)) for i in range(5)]
    p = start(Release("2", NEW), nodes, now=0)
    assert sorted(p.order) == ["n1", "n2", "n4"]
    views = {v.name: replace(v, running=NEW if v.name in p.order else OLD) for v in nodes}
    p = step(step(p, POLICY, views, 1), POLICY, views, 11)
    assert p.wave == 1  # wave 1 passed without the fixed nodes
    assert ReleaseMeta.from_wire(ReleaseMeta(fixed=True).to_wire()).fixed
    assert not ReleaseMeta.from_wire({"fx": "yes"}).fixed  # only a real true counts
    alone = start(Release("2", NEW), [NodeView("n0", True, OLD, True, fixed=True)], now=0)
    assert alone.order == ()  # nobody to wait for: done after the gate's healthy time
    assert step(step(alone, POLICY, {}, 1), POLICY, {}, 12).status == DONE
