"""A CPU-starved node (issue 12 §3 and §4): one agent pinned to a core beside busy loops,
its two peers on the other core, and on top of that stopped (SIGSTOP) for 1 s of every
1.1 s, as a TCG guest's vCPU or an overloaded Pi is descheduled; for 20 s.
The starved node must not accuse its healthy peers (no one declared dead by it), and the
peers must absorb its slowness (Lifeguard's health multiplier, the suspicion floor): no
one is declared dead anywhere. Prints what each node suspected.

Needs two cores (skipped otherwise)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lab.cluster import Cluster
from support.agents import GOSSIP, states, wait_for

STARVE_FOR = 20.0
BUSY_LOOPS = 3
STOPPED, RUNNING = 1.0, 0.1  # s of each duty cycle
LINE = re.compile(r" (suspect|dead): (\S+): ")

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(3, extra_args=GOSSIP)


def accusations(log: str, since: int) -> list[tuple[str, str]]:
    """(suspect|dead, whom) for each such line a node logged after byte `since`."""
    text = Path(log).read_text(errors="replace")[since:]
    return [(m.group(1), m.group(2).rstrip(":")) for m in LINE.finditer(text)]


def test_starved_node_accuses_nobody_and_nobody_declares_it_dead(cluster: Cluster):
    names = [n.name for n in cluster.nodes]
    wait_for(lambda: all(set(states(cluster, n.addr).values()) == {"alive"}
                         for n in cluster.nodes), what="all alive everywhere")
    victim, healthy = cluster.nodes[0], cluster.nodes[1:]
    cores = sorted(os.sched_getaffinity(0))
    starved_core, other_cores = {cores[0]}, set(cores[1:])
    marks = {n.name: len(Path(n.log).read_text(errors="replace")) for n in cluster.nodes}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(BUSY_LOOPS)]
    try:
        for p in busy:
            os.sched_setaffinity(p.pid, starved_core)
        os.sched_setaffinity(victim.pid, starved_core)
        for n in healthy:
            os.sched_setaffinity(n.pid, other_cores)
        end = time.monotonic() + STARVE_FOR
        while time.monotonic() < end:
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(STOPPED)
            os.kill(victim.pid, signal.SIGCONT)
            time.sleep(RUNNING)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        for p in busy:
            p.kill()
            p.wait()
        for n in cluster.nodes:
            os.sched_setaffinity(n.pid, set(cores))
    seen = {n.name: accusations(n.log, marks[n.name]) for n in cluster.nodes}
    print(f"\n{victim.name} starved ({BUSY_LOOPS} busy loops on its core) for "
          f"{STARVE_FOR:.0f} s; accusations logged:")
    for name in names:
        print(f"  by {name}: {seen[name] or 'none'}")
    dead = [(by, whom) for by, lines in seen.items() for kind, whom in lines if kind == "dead"]
    assert not dead, f"declared dead (by, whom): {dead}"
    # A peer the healthy nodes also suspected was slow itself (on a loaded host the other
    # core is shared too: seen once in CI with two QEMU guests beside the test); an
    # accusation only the starved node made is the false one Lifeguard must prevent.
    corroborated = {w for n in healthy for _, w in seen[n.name] if w != n.name}
    false = [w for _, w in seen[victim.name] if w not in corroborated]
    assert not false, f"the starved node alone accused healthy peers: {false}"
    wait_for(lambda: all(set(states(cluster, n.addr).values()) == {"alive"}
                         for n in cluster.nodes), what="all alive again")
