"""network.yaml's gossip round and fanout apply from the state that names them: a node
starts at v0 with the defaults and takes the pushed state's pace without a restart (before,
every booted image kept the default 200 ms rounds forever); the --gossip-interval flag
still wins over the state. Raft's timers scale with the round."""

from __future__ import annotations

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.tuning import RAFT_ELECTION, RAFT_HEARTBEAT, raft_pace
from support.agents import api, post_envelope, wait_for

STATE = b"""\
schema: 1
network: {name: local}
spores:
  latent: {interval_ms: 1000, fanout: 2}
"""


def test_a_pushed_state_sets_the_gossip_round_and_fanout(start_cluster):
    c = start_cluster(2, sclerotia=1)  # no --gossip-interval: the state decides
    n1 = c.nodes[0].addr
    before = api(c, "/api/v1/node", n1)["gossip"]
    assert before == {"interval_s": 0.2, "fanout": 3}, before
    _, env = sign_state(NetworkDir(c.network), STATE)
    assert post_envelope(c, env, n1)[1] == 200
    for n in c.nodes:
        wait_for(lambda a=n.addr: api(c, "/api/v1/node", a)["gossip"] ==
                 {"interval_s": 1.0, "fanout": 2}, timeout=30, what=f"{n.name} at 1 s rounds")
    # Raft gives slow rounds the same room: elections wait 3 rounds, not 0.6 s
    wait_for(lambda: api(c, "/api/v1/primary", n1)["election_timeout"] == 3.0, timeout=10,
             what="n1's Raft side at 3 s elections")


def test_raft_timers_follow_the_gossip_round():
    assert raft_pace(0.2) == (RAFT_HEARTBEAT, *RAFT_ELECTION)  # the default network
    assert raft_pace(0.05) == (RAFT_HEARTBEAT, *RAFT_ELECTION)  # never below them
    assert raft_pace(1.0) == (0.5, 3.0, 6.0)


def test_the_flag_wins_over_the_state(start_cluster):
    c = start_cluster(1, sclerotia=1, extra_args=["--gossip-interval", "0.3"])
    _, env = sign_state(NetworkDir(c.network), STATE)
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    wait_for(lambda: api(c, "/api/v1/state", c.nodes[0].addr)["version"] >= 1, what="v1")
    assert api(c, "/api/v1/node", c.nodes[0].addr)["gossip"] == {"interval_s": 0.3,
                                                                  "fanout": 2}
