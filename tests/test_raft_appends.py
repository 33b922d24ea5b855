"""A stale AppendEntries (delayed, repeated, or a heartbeat from a leader whose next index
for us fell behind) must not cut entries this node already applied (issue 12 §4: the
two-node boot test's `truncating already-applied log entries`). Table tests of the pure
rule, then a real follower store fed the leader's own entries, with pysyncobj's handler
alone as the control that shows the fault."""

from __future__ import annotations

import logging
import time

import pytest
from pysyncobj import SyncObj

from agent.raft.appends import skip_known
from agent.raft.store import PrimaryStore
from support.primary import SECRET, ports


def e(idx: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"c%d" % idx, idx, term)


OURS = [e(1, 0), *(e(i) for i in range(2, 8))]  # our log 1..7, committed to 7


@pytest.mark.parametrize(("prev", "sent", "ours", "commit", "want"), [
    # nothing held beyond prev: pysyncobj's own path
    (7, [e(8)], OURS[6:], 7, None),
    # a stale repeat of 2..3: nothing new, keep all we committed
    (1, [e(2), e(3)], OURS, 7, (7, 1, [])),
    # a heartbeat from far behind: keep up to the commit index only
    (1, [], OURS, 5, (5, 1, [])),
    # known prefix, then new entries: append after the prefix
    (5, [e(6), e(7), e(8)], OURS[4:], 7, (7, 1, [e(8)])),
    # a conflict (same index, newer term) past the commit index: truncate from there
    (5, [e(6), e(7, 2)], OURS[4:], 6, (6, 1, [e(7, 2)])),
    (6, [e(7, 2)], OURS[5:], 6, None),
])
def test_skip_known(prev, sent, ours, commit, want):
    assert skip_known(prev, sent, ours, commit) == want


def _leader_entries(tmp_path) -> list:
    leader = PrimaryStore(ports(1)[0], [], SECRET, tmp_path / "l", autoTick=False)
    try:
        end = time.monotonic() + 10
        while not leader._isLeader():
            assert time.monotonic() < end, "a single store never led"
            leader.doTick(0.05)
        for v in range(1, 6):
            leader.put_envelope(v, "sha", b"env", callback=lambda *_: None)
            for _ in range(3):
                leader.doTick(0.01)
        assert leader.version == 5
        return leader._SyncObj__getEntries(1)
    finally:
        leader.destroy()


@pytest.mark.parametrize("handler", ["ours", "pysyncobj alone"])
def test_a_stale_append_does_not_cut_applied_entries(tmp_path, caplog, handler):
    entries = _leader_entries(tmp_path)
    last = entries[-1][1]
    # a follower with one unreachable peer: it never elects itself, so only the messages
    # fed below change its log
    f = PrimaryStore(ports(1)[0], ports(1), SECRET, tmp_path / "f", autoTick=False)
    receive = f._SyncObj__onMessageReceived if handler == "ours" else \
        (lambda node, m: SyncObj._SyncObj__onMessageReceived(f, node, m))
    node = next(iter(f.otherNodes))

    def append(prev: int, sent: list, commit: int, term: int = 1) -> None:
        receive(node, {"type": "append_entries", "term": term, "commit_index": commit,
                       "entries": sent, "prevLogIdx": prev,
                       "prevLogTerm": entries[prev - 1][2]})
        for _ in range(3):
            f.doTick(0.01)

    def held() -> list[tuple[int, int]]:
        return [(x[1], x[2]) for x in f._SyncObj__getEntries(1)]

    try:
        append(1, entries[1:], last)
        assert f.version == 5 and f._SyncObj__raftLastApplied == last
        caplog.set_level(logging.CRITICAL, logger="pysyncobj")
        append(1, entries[1:3], 3)  # the first message again, arriving late
        print(f"{handler}: log after a stale append: {held()}")
        if handler == "pysyncobj alone":  # the fault, so this test can fail
            assert "truncating already-applied" in caplog.text
            assert len(held()) == 3
            return
        assert "truncating" not in caplog.text
        assert held() == [(x[1], x[2]) for x in entries]
        assert f._SyncObj__raftCommitIndex == last
        # an uncommitted entry of an old term is still replaced by a newer leader's
        stale = (entries[-1][0], last + 1, 1)
        append(last, [stale], last)
        newer = (entries[-1][0], last + 1, 2)
        append(last, [newer], last, term=2)
        assert held()[-1] == (last + 1, 2) and len(held()) == last + 1
    finally:
        f.destroy()
