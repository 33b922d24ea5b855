"""Time from a node's death to a new committed placement (printed): five agents on
loopback (two dedicated sclerotia, target three, gossip every 0.2 s), a two-replica podman
service; SIGKILL a node running a replica, time until the leader's gossip calls it dead and
until the leader has committed a placement without it; restart it; repeat.
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_placement.py"""

from __future__ import annotations

import statistics
import time

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import cluster_down, cluster_up, kill_node, restart_node, wait_ready
from agent.raft.membership import raft_addr
from support.agents import (
    BACKBONE_YAML,
    GOSSIP,
    api,
    leader_view,
    post_envelope,
    wait_for,
    web_hosts,
)

pytestmark = pytest.mark.bench

REPEATS = 8


def test_bench_death_to_placement(tmp_path):
    d = tmp_path / "c"
    c = cluster_up(d, 5, sclerotia=2, extra_args=GOSSIP, progress=lambda _: None)
    try:
        seed = tmp_path / "spore.json"
        _, env = sign_state(NetworkDir(c.network), BACKBONE_YAML.replace("SEED", str(seed))
                            .encode())
        assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
        dead_at, placed_at = [], []
        for _ in range(REPEATS):
            view = wait_for(lambda: (v := leader_view(c)) and len(v["raft_members"]) == 3
                            and len(web_hosts(v)) == 2 and v, timeout=60, what="steady")
            leader = next(n for n in c.nodes if raft_addr(n.addr) == view["leader"])
            rafts = set(view["raft_members"])
            hosts = web_hosts(view)
            # a replica host outside Raft if there is one: placement, not membership
            name = next((h for h in hosts if raft_addr(next(n.addr for n in c.nodes
                                                            if n.name == h)) not in rafts),
                        hosts[0])
            victim = next(n for n in c.nodes if n.name == name)
            alive = [n.name for n in c.nodes if n is not victim]
            kill_node(victim)
            t0 = time.monotonic()
            seen_dead = None
            while time.monotonic() - t0 < 60:
                if seen_dead is None and any(
                        m["name"] == name and m["state"] == "dead"
                        for m in api(c, "/api/v1/members", leader.addr)):
                    seen_dead = time.monotonic() - t0
                v = leader_view(c, alive)
                if v and name not in v["placement"]["shares"]:
                    placed_at.append(time.monotonic() - t0)
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"no placement without {name} within 60 s")
            dead_at.append(seen_dead or placed_at[-1])
            restart_node(c, name)
            wait_ready(victim)
    finally:
        cluster_down(d)
    print(f"\nkills  dead p50  placed p50  placed max  (s; gossip 0.2 s)\n{REPEATS:5d}  "
          f"{statistics.median(dead_at):8.2f}  {statistics.median(placed_at):10.2f}  "
          f"{max(placed_at):10.2f}")
