"""Issue 15's partition rules for replicated VMs, as tables of the pure decisions:
- an old primary that comes back from a partition stops its copy as soon as it learns of
  a newer placement: from a peer's gossip (a member on a newer placement running the VM,
  agent/node/decisions.py `stale_copies`), or from the placement itself;
- a primary that cannot reach a majority keeps running what it is placed for (its last
  committed placement), and never resumes a VM it is not placed for: a guest paused for a
  planned move resumes only where the placement still names it and a majority is in reach
  (agent/node/vm/policy.py `after_handoff`), as the VM runtime applies it (no QEMU)."""

from __future__ import annotations

import pytest

from agent.desired.model import NodeShare
from agent.gossip.member import MemberView, PeerMeta
from agent.node.decisions import committed_share, runs_vm, stale_copies
from agent.node.vm.policy import HANDOFF_GIVE_UP_S, HANDOFF_WAIT_S, after_handoff


def mv(name: str, pv: int, vms: dict | None = None, state: str = "alive") -> MemberView:
    return MemberView(name, f"127.0.0.1:{name[-1]}", state,
                      meta=PeerMeta(status={"vms": vms} if vms is not None else {}, pv=pv))


@pytest.mark.parametrize("members, pv, vms, want", [
    # n2 was cut off on placement 4; n3 runs db on placement 5: n2's copy is stale
    ([mv("n3", 5, {"db": "running"})], 4, {"db"}, {"db"}),
    # the same placement: not stale (both sides act on one placement; not a move)
    ([mv("n3", 4, {"db": "running"})], 4, {"db"}, set()),
    # an older placement running it does not stop ours (it will stop its own)
    ([mv("n3", 3, {"db": "running"})], 4, {"db"}, set()),
    # a member that is starting it or stopping it does not count yet
    ([mv("n3", 5, {"db": "starting"}), mv("n4", 6, {"db": "stopping"})], 4, {"db"}, set()),
    # dead members say nothing; other VMs are not ours to stop
    ([mv("n3", 5, {"db": "running"}, "dead"), mv("n4", 6, {"web": "running"})], 4,
     {"db"}, set()),
    # our own row never counts; a malformed `vms` is skipped
    ([mv("n2", 9, {"db": "running"}), mv("n5", 9, None),
      MemberView("n6", "x", "alive", meta=PeerMeta(status={"vms": "junk"}, pv=9))], 4,
     {"db"}, set()),
    ([mv("n3", 5, {"db": "running", "web": "running"})], 4, {"db", "web", "x"},
     {"db", "web"}),
])
def test_a_copy_is_stale_when_a_newer_placement_runs_it(members, pv, vms, want):
    assert stale_copies(members, "n2", pv, vms) == want


def test_runs_vm_reads_gossip():
    rows = [mv("n3", 5, {"db": "running"}), mv("n4", 5, {"db": "running"}, "suspect")]
    assert runs_vm(rows, "n3", "db") and not runs_vm(rows, "n3", "web")
    assert not runs_vm(rows, "n4", "db") and not runs_vm(rows, "n9", "db")


W, G = HANDOFF_WAIT_S, HANDOFF_GIVE_UP_S


@pytest.mark.parametrize("placed_here, elsewhere, majority, waited, want", [
    # moved away: quit once the new primary runs it, never before (the paused copy is all
    # there is), unless it never does
    (False, True, True, 0.0, "quit"),
    (False, True, False, 0.0, "quit"),
    (False, False, True, W * 2, "wait"),
    (False, False, False, G, "quit"),
    # still placed here: wait for the commit, then resume only with a majority in reach
    (True, False, True, 0.0, "wait"),
    (True, False, True, W, "resume"),
    (True, False, False, W, "wait"),  # cut off: the leader may have committed the move
    (True, False, False, G * 10, "wait"),  # ... however long it waits
    (True, True, True, W, "wait"),  # gossip shows it running elsewhere: never twice
])
def test_a_paused_guest_resumes_only_where_placed_with_a_majority(placed_here, elsewhere,
                                                                  majority, waited, want):
    assert after_handoff(placed_here, elsewhere, majority, waited) == want


def test_a_node_cut_off_keeps_acting_on_its_last_placement():
    """No new placement in a minority: the share held is the last committed one (so the
    old primary keeps running its VM), and a node the placement left out runs none."""
    placement = {"n2": NodeShare("n2", endophytes_primary=("db",), placement_version=4)}
    assert committed_share(placement, 4, "n2", "rhizomorph").endophytes_primary == ("db",)
    assert committed_share(placement, 4, "n3", "rhizomorph").endophytes_primary == ()


class FakeReplicator:
    """What the runtime asks of a Replicator around a planned move."""

    def __init__(self) -> None:
        self.thawed = 0

    async def final(self, addr: str) -> dict:
        return {"seq": 3, "to": addr}

    async def thaw(self) -> None:
        self.thawed += 1

    def stop(self) -> None:
        pass


def test_the_runtime_applies_the_handoff_rule(tmp_path):
    """VmRuntime around `after_handoff`, without QEMU: a paused guest still placed here is
    resumed only with a majority; one moved away is quit (not powered down) only once
    gossip shows its new primary running it."""
    import asyncio
    import time

    from agent.node.vm.runtime import Handoff, VmRuntime
    from agent.node.vm.spec import VmSpec
    from agent.node.vm.supervisor import VmSupervisor

    seen = {"runs": False, "majority": False}

    async def go() -> None:
        rt = VmRuntime(tmp_path, runs_on=lambda vm, node: seen["runs"] and node == "n3",
                       majority=lambda: seen["majority"], targets=lambda _: ["addr3"])
        sup = rt.vms["db"] = VmSupervisor(VmSpec("db"), rt.paths("db"), rt.cache)
        rep = rt.replicators["db"] = FakeReplicator()  # type: ignore[assignment]
        with pytest.raises(ValueError, match="not a live backup"):
            await rt.hand_off("db", "n4", "addr4")
        assert (await rt.hand_off("db", "n3", "addr3")) == {"seq": 3, "to": "addr3"}
        with pytest.raises(ValueError, match="already paused for a move to n3"):
            await rt.hand_off("db", "n3", "addr3")
        rt.handoffs["db"] = Handoff("n3", time.monotonic() - 10 * HANDOFF_WAIT_S)
        rt._after_handoff("db")  # no majority: however long it waited
        await asyncio.sleep(0)
        assert rep.thawed == 0 and "db" in rt.handoffs
        seen["majority"] = True
        rt._after_handoff("db")
        await asyncio.sleep(0)
        assert rep.thawed == 1 and "db" not in rt.handoffs
        rt.handoffs["db"] = Handoff("n3", time.monotonic())  # paused again, then moved
        rt._stop("db")
        await asyncio.sleep(0.5)
        assert "db" in rt._stopping and not sup.quit_on_stop  # n3 does not run it yet
        seen["runs"] = True
        await asyncio.wait_for(rt._stopping["db"], 5)
        assert sup.quit_on_stop and rep.thawed == 1

    asyncio.run(go())
