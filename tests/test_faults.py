"""Two real agents with a fault-injecting proxy on the path n2 -> n1."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from agent.authoring.bootstrap import bootstrap_first_node
from agent.authoring.identity import init_network, sign_state
from agent.lab.cluster import (
    ClusterNode,
    agent_argv,
    free_port_pair,
    kill_node,
    start_node,
    wait_ready,
)
from agent.node.datadir import NodeDir
from agent.raft.membership import raft_addr
from agent.statefile import atomic_write
from agent.trust.encoding import dump_json
from agent.trust.tokens import create_token
from support.agents import GOSSIP, call
from support.faultproxy import FaultProxy, Faults


class ProxyThread:
    def __init__(self, port: int, target: int, faults: Faults) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxy = FaultProxy(port, ("127.0.0.1", target), faults)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.proxy.__aenter__())
            ready.set()
            self.loop.run_forever()

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()
        ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(5)


@pytest.fixture
def pair(tmp_path: Path):
    def make(faults: Faults):
        net = init_network(tmp_path / "net", "faults")
        p1, p2, q = free_port_pair(), free_port_pair(), free_port_pair()
        n1 = ClusterNode("n1", "sclerotium", f"127.0.0.1:{p1}", str(tmp_path / "n1"),
                         str(tmp_path / "n1.log"))
        n2 = ClusterNode("n2", "rhizomorph", f"127.0.0.1:{p2}", str(tmp_path / "n2"),
                         str(tmp_path / "n2.log"))
        bootstrap_first_node(net, Path(n1.data_dir), "n1", n1.addr)
        # n1 advertises the proxy, so its Raft side names itself raft_addr(proxy): start
        # its one-member Primary there (enrolment counts token uses in it)
        atomic_write(NodeDir(Path(n1.data_dir)).raft_members,
                     dump_json([raft_addr(f"127.0.0.1:{q}")]), 0o600)
        proxy = ProxyThread(q, p1, faults)
        start_node(n1, agent_argv(n1, net.spore_json, None,
                                  GOSSIP + ["--advertise", f"127.0.0.1:{q}"]))
        wait_ready(n1)
        root = net.root()
        token = create_token(root, net.signing_keys(root), "rhizomorph", timedelta(hours=1))
        start_node(n2, agent_argv(n2, net.spore_json, token, GOSSIP))
        wait_ready(n2)
        made.append((n1, n2, proxy))
        return net, n1, n2, proxy

    made: list = []
    yield make
    for n1, n2, proxy in made:
        kill_node(n1)
        kill_node(n2)
        proxy.stop()


def get(net, addr: str, path: str):
    return call(net, [addr], "GET", path)


def post(net, addr: str, data: bytes):
    return call(net, [addr], "POST", "/api/v1/envelope", data)


def test_corrupted_duplicated_delayed_traffic_never_yields_bad_state(pair):
    faults = Faults(delay=0.005, duplicate=0.05, corrupt=0.2, seed=3)
    net, n1, n2, proxy = pair(faults)
    version, env = sign_state(net, net.network_yaml.read_bytes())
    assert post(net, n1.addr, env)[1] == 200
    deadline = time.monotonic() + 40
    while get(net, n2.addr, "/api/v1/state")[2]["version"] != version:
        assert time.monotonic() < deadline, "n2 never got the state through the proxy"
        time.sleep(0.3)
    # n2 holds exactly the bytes n1 accepted: nothing corrupted slipped through
    import hashlib

    held = get(net, n2.addr, "/api/v1/state")[2]["sha256"]
    assert held == hashlib.sha256(net.network_yaml.read_bytes()).hexdigest()
    assert faults.counts["corrupted"] > 0


def test_no_false_death_through_a_proxy_dropping_ten_percent(pair):
    faults = Faults(drop=0.10, seed=5)
    net, n1, n2, proxy = pair(faults)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # wait until n2 knows n1 via the proxy address
        members = {m["name"]: m for m in get(net, n2.addr, "/api/v1/members")[2]}
        if "n1" in members:
            break
        time.sleep(0.2)
    end = time.monotonic() + 12
    while time.monotonic() < end:
        members = {m["name"]: m for m in get(net, n2.addr, "/api/v1/members")[2]}
        assert members["n1"]["state"] != "dead", members["n1"]
        time.sleep(0.3)
    assert faults.counts["dropped"] > 0
