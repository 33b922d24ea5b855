"""Five agents, one network namespace each, joined by veth pairs to a bridge (root only).

Cut one node's link: both sides keep their state; push on the majority; heal: converge."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from agent.cluster import cluster_down, cluster_up
from agent.identity import sign_state
from agent.netdir import NetworkDir
from agent.netns import set_link
from test_cluster import api, post_envelope, states, wait_for

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                 reason="needs root and iproute2")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("netns") / "c"
    c = cluster_up(d, 5, netns=True, sclerotia=1, extra_args=["--gossip-interval", "0.2"],
                   progress=lambda _: None)
    yield c
    cluster_down(d)


def test_each_node_has_its_own_address(cluster):
    assert [n.addr for n in cluster.nodes] == [f"10.77.0.{i}:7946" for i in range(1, 6)]
    for n in cluster.nodes:
        assert api(cluster, "/api/v1/node", n.addr)["listen"] == n.addr


def test_cut_link_keeps_state_then_heal_converges(cluster):
    net = NetworkDir(cluster.network)
    data = net.network_yaml.read_bytes()
    v1, env1 = sign_state(net, data)
    assert post_envelope(cluster, env1, cluster.nodes[0].addr)[1] == 200
    wait_for(lambda: all(api(cluster, "/api/v1/state", n.addr)["version"] == v1
                         for n in cluster.nodes), what="all at v1")
    cut = cluster.nodes[4]
    set_link(f"veth-{cut.name}", up=False)
    try:
        wait_for(lambda: states(cluster, cluster.nodes[0].addr).get(cut.name) == "dead",
                 timeout=40, what="majority sees the cut node dead")
        v2, env2 = sign_state(net, data)
        assert post_envelope(cluster, env2, cluster.nodes[1].addr)[1] == 200
        wait_for(lambda: all(api(cluster, "/api/v1/state", n.addr)["version"] == v2
                             for n in cluster.nodes[:4]), what="majority at v2")
        time.sleep(1)
        # the cut side kept its state: read its data dir, since its link is down
        held = (Path(cut.data_dir) / "state" / "accepted-version").read_text().strip()
        assert held == str(v1)
    finally:
        set_link(f"veth-{cut.name}", up=True)
    wait_for(lambda: api(cluster, "/api/v1/state", cut.addr)["version"] == v2, timeout=40,
             what="cut node converges after heal")
    wait_for(lambda: all(states(cluster, n.addr).get(cut.name) == "alive"
                         for n in cluster.nodes[:4]), timeout=40, what="cut node alive again")
