"""Primary spore under SIGKILL: three sclerotia as separate processes
(tests/support/primary_node.py) on loopback. Each round a client writes rising versions to
the leader, the leader (or, in some rounds, every node at once) is SIGKILLed mid-write and
restarted on the same data dir.
Checked after every recovery: the held version is >= the highest acknowledged one, its sha256
and bytes are exactly what was written for it, a member registered once at the start is still
there, and all nodes agree. Run: .venv/bin/python -m pytest -s tests/test_primary_crash.py (~35 s).

Why this can fail: an `ok` is only sent once pysyncobj applied the entry on the leader, i.e.
a majority has it in its journal. If a journal were not kept across the kill (or the term/vote
were not, letting a stale node win and truncate), the leader after recovery would hold less
than the highest `ok` and `check` raises; `test_check_detects_lost_commits` below wipes the
data dirs during a kill to prove that `check` does catch a loss.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import threading
import time

import pytest

from support.primary import Conn, NodeProcess, ProcessCluster
from support.primary_node import envelope

MEMBER = "sclerotium-0"  # registered once, acknowledged, before the first kill


def check(leader_state: dict, max_acked: int, max_sent: int) -> None:
    assert MEMBER in leader_state["members"], f"committed registration of {MEMBER} lost"
    v = leader_state["version"]
    assert v >= max_acked, f"committed version lost: holds {v}, {max_acked} was acknowledged"
    assert v <= max_sent, f"holds {v}, never written (max sent {max_sent})"
    if v:
        sha, _ = envelope(v)
        assert leader_state["sha256"] == sha, f"sha256 of version {v} changed"
        assert leader_state["data_sha256"] == sha, f"bytes of version {v} changed"


def register(cluster: ProcessCluster) -> None:
    leader, _ = cluster.wait_ready()
    conn = Conn(leader.control)
    try:
        assert conn.call(f"register {MEMBER}") == "ok"
    finally:
        conn.close()


class Writer(threading.Thread):
    """Writes rising versions to one node until told to stop or its connection breaks."""

    def __init__(self, node: NodeProcess, first: int) -> None:
        super().__init__(daemon=True)
        self.node, self.next = node, first
        self.stop = threading.Event()
        self.acked: list[int] = []
        self.failed: list[str] = []
        self.noops: list[int] = []

    def run(self) -> None:
        try:
            conn = Conn(self.node.control)
        except OSError as e:
            self.failed.append(f"connect: {e}")
            return
        try:
            while not self.stop.is_set():
                v = self.next
                self.next += 1
                reply = conn.call(f"put {v}")
                if reply == "ok true":
                    self.acked.append(v)
                elif reply == "ok false":
                    self.noops.append(v)  # nothing newer was ever written: must not happen
                else:
                    self.failed.append(reply)
        except OSError:
            pass  # killed mid-write: the version in flight is neither acked nor refused
        finally:
            conn.close()


ROUNDS = 20
# Round r kills KINDS[r % 4]: the leader alone, the leader and a follower (the survivor may
# lag), or every node at once (recovery from the journals/dumps alone).
KINDS = ("leader", "leader", "leader+follower", "all")


@pytest.mark.parametrize("conf", [
    pytest.param({}, id="journal"),
    pytest.param({"logCompactionMinEntries": 40}, id="compacting"),
])
def test_no_committed_version_lost_across_sigkill(tmp_path, conf):
    """`compacting` makes pysyncobj write a full dump (forked) every ~40 entries, so kills
    also land during/after compaction and recovery reads dump + journal tail. (By default
    it compacts after 5000 entries or 300 s, so production nodes get there within minutes.)"""
    seed = int(os.environ.get("PRIMARY_CRASH_SEED", "1234"))  # kill timing and victims
    rng = random.Random(seed)
    max_acked = 0
    next_version = 1
    acked_total = 0
    recover: dict[str, list[float]] = {k: [] for k in KINDS}
    agree: list[float] = []
    r, kind, victims = -1, "start", []
    with ProcessCluster(3, tmp_path, conf) as cluster:
        try:
            register(cluster)
            for r in range(ROUNDS):
                kind = KINDS[r % len(KINDS)]
                leader, _ = cluster.wait_ready()
                w = Writer(leader, next_version)
                w.start()
                time.sleep(rng.uniform(0.02, 0.5))
                victims = {"leader": [leader],
                           "leader+follower": [leader, rng.choice(
                               [n for n in cluster.nodes if n is not leader])],
                           "all": cluster.nodes}[kind]
                t0 = time.monotonic()
                for node in victims:
                    node.kill()
                for node in victims:
                    node.reap()
                w.join(timeout=10)
                assert not w.is_alive(), "writer hung after the kill"
                assert not w.noops, f"puts answered as not newer: {w.noops[:5]}"
                next_version = w.next
                if w.acked:
                    max_acked = max(max_acked, w.acked[-1])
                acked_total += len(w.acked)
                for node in victims:
                    node.start()
                _, st = cluster.wait_ready()
                recover[kind].append(time.monotonic() - t0)
                check(st, max_acked, next_version - 1)
                for s in cluster.wait_agree():
                    check(s, max_acked, next_version - 1)
                agree.append(time.monotonic() - t0)
        except BaseException:
            print(f"round {r} ({kind}), victims {[n.addr for n in victims]}, max acked "
                  f"{max_acked}, states now:")
            for node in cluster.nodes:
                print(f"  {node.addr}: {node.read()}")
            print(cluster.tails())
            raise
        logs = "".join(n.log.read_text(errors="replace") for n in cluster.nodes)
    print(f"\n[{'compacting' if conf else 'journal'}] seed {seed}, rounds {ROUNDS}, acked writes "
          f"{acked_total}, highest acked {max_acked}, versions sent {next_version - 1}")
    for kind, xs in recover.items():
        if xs:
            print(f"  kill {kind:15s} -> ready leader: p50 {statistics.median(xs):.2f} s, "
                  f"max {max(xs):.2f} s ({len(xs)} rounds)")
    print(f"  kill -> all nodes agree: p50 {statistics.median(agree):.2f} s, "
          f"max {max(agree):.2f} s")
    print(f"  log warnings: {logs.count(' WARNING ')} "
          f"(truncating already-applied: {logs.count('truncating already-applied')}, "
          f"commit index clamped: {logs.count('clamping to journal end')}, "
          f"dump failures: {logs.count('Failed to store full dump')})")
    assert acked_total > ROUNDS, "too few writes acknowledged for the test to mean anything"


def test_check_detects_lost_commits(tmp_path):
    """Control for the test above: when the data dirs do not survive the kill, the committed
    versions are gone and `check` must say so."""
    with ProcessCluster(3, tmp_path) as cluster:
        register(cluster)
        leader, _ = cluster.wait_ready()
        w = Writer(leader, 1)
        w.start()
        time.sleep(0.3)
        for node in cluster.nodes:
            node.kill()
        for node in cluster.nodes:
            node.reap()
        w.join(timeout=10)
        assert w.acked
        for node in cluster.nodes:
            shutil.rmtree(node.data_dir)
            node.start()
        _, st = cluster.wait_ready()
        with pytest.raises(AssertionError, match="lost"):
            check(st, w.acked[-1], w.next - 1)
        with pytest.raises(AssertionError, match="committed version lost"):
            check({**st, "members": [MEMBER]}, w.acked[-1], w.next - 1)
