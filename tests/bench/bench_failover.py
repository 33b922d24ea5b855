"""Primary spore failover figures (printed): time from SIGKILL of the Raft leader until a new
leader has committed a write, for 3 and 5 sclerotia as separate processes on loopback
(tests/support/primary_node.py). Target: under 1 s.
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_failover.py"""

from __future__ import annotations

import statistics
import time

import pytest

from support.primary import Conn, NodeProcess, ProcessCluster

pytestmark = pytest.mark.bench

REPEATS = 10


def commit_after_kill(cluster: ProcessCluster, leader: NodeProcess,
                      version: int) -> tuple[float, float]:
    """Kill the leader; return (s until a survivor says it leads, s until it committed)."""
    survivors = [n for n in cluster.nodes if n is not leader]
    t0 = time.monotonic()
    leader.kill()
    elected = None
    while time.monotonic() - t0 < 10:
        for node in survivors:
            st = node.read()
            if not (st and st["leader"]):
                continue
            if elected is None:
                elected = time.monotonic() - t0
            conn = Conn(node.control)
            try:
                if conn.call(f"put {version}").startswith("ok"):
                    return elected, time.monotonic() - t0
            except OSError:
                pass
            finally:
                conn.close()
        time.sleep(0.005)
    raise AssertionError(f"no commit within 10 s of the kill\n{cluster.tails()}")


def test_bench_failover(tmp_path):
    print("\nsclerotia  kills  elected p50  commit p50  commit max  (s)")
    for n in (3, 5):
        elected, committed = [], []
        with ProcessCluster(n, tmp_path / str(n)) as cluster:
            try:
                version = 1
                for _ in range(REPEATS):
                    leader, _ = cluster.wait_ready()
                    cluster.wait_agree()
                    e, c = commit_after_kill(cluster, leader, version)
                    version += 1
                    elected.append(e)
                    committed.append(c)
                    leader.reap()
                    leader.start()
            except BaseException:
                print(cluster.tails())
                raise
        print(f"{n:9d}  {REPEATS:5d}  {statistics.median(elected):11.2f}  "
              f"{statistics.median(committed):10.2f}  {max(committed):10.2f}")
