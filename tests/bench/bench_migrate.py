"""Planned-migration pause (printed): three real agents on loopback, the tiny VM (TCG,
128 and 256 MiB) replicated to one backup, moved back and forth between its primary and
its backup with `mycelium vm migrate` (agent/authoring/migrate.py). Per move: the pause
(the guest stopped -> the target runs it), split at the target's QEMU launch, of which
the final `migrate`; the command's total time; and the machine's load.
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_migrate.py"""

from __future__ import annotations

import asyncio
import os
import statistics

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.migrate import migrate
from agent.authoring.netdir import NetworkDir
from support.agents import GOSSIP, api, post_envelope, wait_for
from support.tinyvm import replicated_state

pytestmark = pytest.mark.bench
MOVES = 4


@pytest.mark.parametrize("mem", [128, 256])
def test_bench_planned_migration_pause(start_cluster, mem):
    c = start_cluster(3, sclerotia=1, extra_args=GOSSIP)
    net = NetworkDir(c.network)
    env = sign_state(net, replicated_state(None, memory_mb=mem))[1]
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    addr = {n.name: n.addr for n in c.nodes}

    def holds(node: str) -> bool:  # took a checkpoint from the current primary
        return any(b["vm"] == "tiny" and b["received_bytes"] > 0
                   for b in api(c, "/api/v1/vms", addr[node])["backups"])

    def running(node: str) -> bool:
        return any(v["state"] == "running" for v in api(c, "/api/v1/vms", addr[node])["vms"])

    wait_for(lambda: running("n2") and holds("n3"), 180, "tiny on n2, backed up on n3")
    rows = []
    here, there = "n2", "n3"
    for i in range(MOVES):
        r = asyncio.run(migrate(net, c.addresses(), "tiny", there, say=lambda _: None))
        rows.append(r)
        launch = r.launch_s or 0.0
        print(f"\n  {mem} MiB move {i + 1} {here}->{there}: pause {r.pause_s:.2f} s = "
              f"{launch:.2f} s to the target's QEMU launch (final migrate {r.migrate_s:.2f} s,"
              f" frame, commit, placement, stream) + {r.pause_s - launch:.2f} s QEMU start "
              f"and load; total {r.total_s:.1f} s, {r.boot}, load {os.getloadavg()[0]:.1f}")
        here, there = there, here
        wait_for(lambda t=there: holds(t), 180, f"{there} holding checkpoints again")
    pauses = [r.pause_s for r in rows]
    print(f"\n  {mem} MiB: planned-migration pause {min(pauses):.2f}-{max(pauses):.2f} s, "
          f"median {statistics.median(pauses):.2f} s over {MOVES} moves")
