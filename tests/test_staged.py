"""Staged state changes: what restarts, who goes first, which content a node applies, and
the gate on contents (pure, tables)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.desired.model import DesiredState, Endomycete, RolloutPolicy
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
    step,
)
from agent.desired.staged import (
    begin,
    content_id,
    content_to_apply,
    last_good,
    previous_content,
    restarting,
)
from agent.gossip.member import MemberView, PeerMeta, ReleaseMeta
from agent.node.staged import content_views

POLICY = RolloutPolicy(("1", "all"), healthy_seconds=5, wave_deadline_seconds=100)
BACK = replace(POLICY, auto_rollback=True)
WEB = Endomycete("web", image="localhost/web:1")
DB = Endomycete("db", image="localhost/db:1")


def state(*svcs: Endomycete, **kw) -> DesiredState:
    return DesiredState("t", endomycetes=svcs, **kw)


@pytest.mark.parametrize("old, new, want", [
    (state(WEB), state(replace(WEB, image="localhost/web:2")), ("web",)),
    (state(WEB, DB), state(WEB, replace(DB, manifest="kind: Pod\n")), ("db",)),
    (state(WEB), state(replace(WEB, env={"A": "1"})), ("web",)),
    (state(WEB), state(WEB, DB), ()),  # an added service restarts nothing that runs
    (state(WEB, DB), state(WEB), ()),  # nor does a removed one
    (state(WEB), state(WEB, users=()), ()),  # no service changed
    (None, state(WEB), ()),  # nothing before
])
def test_what_restarts(old, new, want):
    assert restarting(old, new) == want


def test_content_id_names_the_yaml_not_the_version():
    assert content_id(b"a: 1\n") == content_id(b"a: 1\n") != content_id(b"a: 2\n")
    assert len(content_id(b"")) == 16


HOSTS = {"n1": (), "n2": ("web",), "n3": (), "n4": ("web", "db"), "n5": ("db",)}


def test_the_hosts_of_a_changed_service_go_first():
    p = begin("new", 7, "old", ("web",), HOSTS, now=0)
    assert p.status == RUNNING and p.version == "v7" and p.previous == "old"
    assert set(p.order[:2]) == {"n2", "n4"} and sorted(p.order) == sorted(HOSTS)
    assert p.services == ("web",)
    # any leader computes the same order from the same inputs
    assert begin("new", 7, "old", ("web",), dict(reversed(HOSTS.items())), 5).order == p.order


@pytest.mark.parametrize("previous, changed", [
    ("", ("web",)),  # nothing came before (the first state under a policy)
    ("old", ()),  # nothing restarts
    ("new", ("web",)),  # the same content again
])
def test_not_staged_is_done_at_once(previous, changed):
    p = begin("new", 3, previous, changed, HOSTS, now=0)
    assert p.status == DONE and p.previous == "" and p.services == ()


@pytest.mark.parametrize("status, want", [
    (DONE, "new"), (RUNNING, "old"), (PAUSED, "old"), (FAILED, "old"), (ABORTED, "old"),
    (ROLLED_BACK, "old"),
])
def test_last_good_is_what_every_node_can_return_to(status, want):
    p = Progress("new", "v2", ("n1",), "old", status=status)
    assert last_good(p) == want
    assert last_good(None) == ""


@pytest.mark.parametrize("running, recorded, want", [
    (["old", "old", "mid"], None, "old"),  # what most nodes run
    (["new", "old", ""], None, "old"),  # the new content and "nothing yet" do not count
    (["", ""], None, ""),  # nobody reports: nothing to return to
    (["", ""], Progress("old", "v2", ("n1",), "", status=DONE), "old"),  # the record
    (["a", "b"], Progress("b", "v2", ("n1",), "", status=DONE), "b"),  # a tie: the record
    (["b", "a"], None, "a"),  # a tie without a record: the same answer on every leader
    # a state that came before the leader recorded the last one: what the nodes run wins
    (["mid", "mid", "old"], Progress("old", "v2", ("n1",), "", status=DONE), "mid"),
])
def test_the_content_a_rollout_starts_from(running, recorded, want):
    assert previous_content(running, "new", recorded) == want


ORDER = ("n2", "n4", "n1", "n3", "n5")


def prog(status=RUNNING, wave=0) -> Progress:
    return Progress("new", "v2", ORDER, "old", wave=wave, status=status, services=("web",))


@pytest.mark.parametrize("p, policy, name, mine, changes, want", [
    (None, None, "n2", "old", True, "new"),  # no policy: every node at once
    (None, POLICY, "n2", "old", True, "old"),  # not recorded yet, restarts: wait
    (None, POLICY, "n2", "old", False, "new"),  # not recorded yet, restarts nothing
    (None, POLICY, "n2", "", True, "new"),  # nothing applied before: nothing to keep
    (prog(), POLICY, "n2", "old", True, "new"),  # wave 1
    (prog(), POLICY, "n1", "old", True, "old"),  # not its wave yet
    (prog(wave=1), POLICY, "n1", "old", True, "new"),  # its wave came
    (prog(PAUSED), POLICY, "n2", "old", True, "new"),  # paused: keeps what it took
    (prog(PAUSED), POLICY, "n5", "old", True, "old"),
    (prog(FAILED), POLICY, "n2", "old", True, "new"),  # failed: no auto_rollback
    (prog(FAILED), POLICY, "n3", "old", True, "old"),  # the rest never take it
    (prog(ABORTED), POLICY, "n1", "old", True, "old"),
    (prog(ROLLED_BACK), BACK, "n2", "new", True, "old"),  # auto_rollback: back
    (prog(ROLLED_BACK), BACK, "n3", "old", True, "old"),
    (prog(DONE, 1), POLICY, "n5", "old", True, "new"),
    (replace(prog(), sha256="other"), POLICY, "n2", "old", True, "old"),  # an older record
    (replace(prog(), previous=""), POLICY, "n1", "old", True, "old"),  # previous from mine
])
def test_the_content_a_node_applies(p, policy, name, mine, changes, want):
    assert content_to_apply(p, policy, name, "new", mine, changes) == want


def gate(applied: dict[str, str], bad: dict[str, str] = {}, healthy=True) -> dict:  # noqa: B006
    return {n: NodeView(n, True, applied.get(n, "old"), healthy,
                        (bad[n],) if n in bad else ()) for n in ORDER}


def test_a_wave_that_applies_the_content_passes_its_gate():
    p = step(prog(), POLICY, gate({"n2": "new"}), now=1, kind="state")
    assert p.wave == 0 and p.healthy_since == 1
    p = step(p, POLICY, gate({"n2": "new"}), now=7, kind="state")
    assert p.wave == 1  # wave 2: every node
    assert content_to_apply(p, POLICY, "n5", "new", "old", True) == "new"
    p = step(p, POLICY, gate(dict.fromkeys(ORDER, "new")), now=8, kind="state")
    p = step(p, POLICY, gate(dict.fromkeys(ORDER, "new")), now=14, kind="state")
    assert p.status == DONE


def test_a_node_still_on_the_previous_content_holds_its_wave():
    p = step(prog(), POLICY, gate({}), now=50, kind="state")
    assert p.wave == 0 and p.status == RUNNING
    p = step(p, POLICY, gate({}), now=101, kind="state")
    assert p.status == FAILED and "not healthy within 100 s: n2" in p.reason
    # healthy, but not for long enough before the deadline
    p = step(prog(), POLICY, gate({"n2": "new"}), now=99, kind="state")
    p = step(p, POLICY, gate({"n2": "new"}), now=101, kind="state")
    assert p.reason == "wave 1 not healthy within 100 s (healthy for less than 5 s)"


@pytest.mark.parametrize("policy, want", [(POLICY, FAILED), (BACK, ROLLED_BACK)])
def test_a_node_that_fails_the_content_stops_the_rollout(policy, want):
    p = step(prog(), policy, gate({}, bad={"n2": "new"}), now=1, kind="state")
    assert p.status == want and p.reason == "n2 failed to apply state v2"
    # the second wave never comes: nodes outside it keep the previous content
    assert content_to_apply(p, policy, "n1", "new", "old", True) == "old"
    # a failure of another content (an older one) does not count
    assert step(prog(), policy, gate({}, bad={"n2": "older"}), now=1).status == RUNNING


def test_operator_actions_apply_to_a_staged_change():
    p = act(prog(), "pause", now=1)
    assert p.status == PAUSED and step(p, POLICY, gate({"n2": "new"}), now=2) == p
    assert act(p, "resume", now=3).status == RUNNING
    assert act(prog(FAILED), "abort", now=3).status == ABORTED


def member(name: str, status: dict, role: str = "rhizomorph", state: str = "alive"):
    return MemberView(name, "127.0.0.1:1", state, meta=PeerMeta(role, status=status,
                                                                release=ReleaseMeta()))


def test_the_gate_reads_what_gossip_says_of_each_node():
    views = content_views([
        member("n1", {"status": "ok", "content": "new"}),
        member("n2", {"status": "degraded", "content": "old", "content_bad": "new"}),
        member("n3", {"status": "off"}, state="suspect"),
        member("c", {"status": "ok", "content": "new"}, role="hypha"),
        member("n4", {"status": "ok", "content": 5, "content_bad": ["x"]}),  # mistyped
    ])
    assert views == {"n1": NodeView("n1", True, "new", True, ()),
                     "n2": NodeView("n2", True, "old", False, ("new",)),
                     "n3": NodeView("n3", False, "", True, ()),
                     "n4": NodeView("n4", True, "", True, ())}


def test_rollout_status_renders_the_staged_change():
    from agent.views import MemberRow, rollout_notes, staged_lines

    p = Progress("c" * 16, "v9", ("n2", "n1"), "b" * 16, status=FAILED, services=("web",),
                 reason="n2 failed to apply state v9", seq=4)
    view = {"kind": "state", "state": {"version": 9, "content": "c" * 16},
            "policy": {"waves": ["1", "all"], "healthy_seconds": 5,
                       "wave_deadline_seconds": 100, "auto_rollback": False},
            "progress": p.to_dict(), "allowed": ["n2"],
            "nodes": {"n1": {"state": "alive", "content": "b" * 16, "bad": [], "healthy": True},
                      "n2": {"state": "alive", "content": "b" * 16, "bad": ["c" * 16],
                             "healthy": False}}}
    text = "\n".join(staged_lines(view))
    assert "staged change (restarts web) failed: wave 1 (n2) of waves 1, all" in text
    assert "n2 failed to apply state v9" in text and f"previous content {'b' * 16}" in text
    assert f"n2    alive  {'b' * 16}  {'c' * 16}  no" in text
    # `mycelium status`: one line each from the newest progress gossiped
    rows = [MemberRow.from_api({"name": n, "rel": {"run": "", "cro": d}})
            for n, d in (("n1", {**p.to_dict(), "seq": 3, "status": "running"}),
                         ("n2", p.to_dict()))]
    assert rollout_notes(rows) == ["staged change of state v9 (restarts web): failed, wave 1; "
                                   "n2 failed to apply state v9"]
    done = replace(p, status=DONE, services=(), reason="no workload restarts")
    assert rollout_notes([MemberRow.from_api({"name": "n1", "rel": {"cro": done.to_dict()}})
                          ]) == []
    assert staged_lines({**view, "progress": done.to_dict()})[1] == \
        "nothing staged: no workload restarts"
