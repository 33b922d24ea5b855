"""Gossip figures (printed, never asserted). Run: .venv/bin/python -m pytest -m bench -s tests/bench

1. In-process: the real LatentSpore code over the in-memory network on a virtual clock
   (tests/vclock.py), 200 ms interval, fanout 3: time for a new state version to reach
   99.9% of 100 and 1000 nodes with 0% and 10% loss, and bytes per node per second idle
   and during dissemination.
2. Real processes: push-to-all-converged on loopback for 3 and 10 agents, agent RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from agent.cluster import cluster_down, cluster_up, kill_node
from agent.gossip import LatentSpore, MemoryNetwork
from agent.identity import sign_state
from agent.netdir import NetworkDir
from test_cluster import api, post_envelope, states
from vclock import run_virtual

pytestmark = pytest.mark.bench


async def disseminate(n: int, loss: float) -> tuple[float, float, float, float]:
    """Real LatentSpore code on virtual time; membership pre-seeded (we time spreading)."""
    loop = asyncio.get_running_loop()
    net = MemoryNetwork(loss=loss, latency=0.002, seed=7)
    meta = {f"n{i}": {"version": 0} for i in range(n)}
    nodes = [LatentSpore(f"n{i}", f"n{i}", net.transport(f"n{i}"), interval=0.2, fanout=3,
                         get_meta=lambda i=i: dict(meta[f"n{i}"]), incarnation=1, seed=i,
                         clock=loop.time) for i in range(n)]
    for node in nodes:
        net.nodes[node.ms.me.name] = node
    everyone = [x.ms.me for x in nodes]
    for node in nodes:
        node.ms.merge([m for m in everyone if m.name != node.ms.me.name], loop.time())
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        await asyncio.sleep(2.0)
        b0, t0 = net.bytes, loop.time()
        await asyncio.sleep(2.0)
        idle = (net.bytes - b0) / n / (loop.time() - t0)
        meta["n0"] = {"version": 1}
        b0, t0 = net.bytes, loop.time()
        target = int(0.999 * (n - 1))
        while sum(1 for x in nodes[1:]
                  if x.ms.members["n0"].meta.get("version") == 1) < target:
            await asyncio.sleep(0.01)
        took = loop.time() - t0
        busy = (net.bytes - b0) / n / took
        dead = sum(1 for x in nodes for m in x.ms.members.values() if m.state == "dead")
        return took, idle, busy, dead


def test_bench_dissemination():
    print("\nvirtual time, real protocol code, 200 ms rounds, fanout 3, 2 ms latency")
    print("nodes  loss  to-99.9%   idle B/node/s   dissemination B/node/s  false deaths")
    for n in (100, 1000):
        for loss in (0.0, 0.1):
            took, idle, busy, dead = run_virtual(disseminate(n, loss))
            print(f"{n:5d}  {loss:4.0%}  {took:7.2f}s  {idle:14.0f}  {busy:22.0f}  {dead:12d}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_bench_processes(tmp_path):
    print("\nagents  push-to-converged  RSS/agent (MB)  idle CPU/agent")
    for n in (3, 10, 20):
        d = tmp_path / f"c{n}"
        c = cluster_up(d, n, sclerotia=1, extra_args=["--gossip-interval", "0.2"],
                       progress=lambda _: None)
        try:
            net = NetworkDir(c.network)
            v, env = sign_state(net, net.network_yaml.read_bytes())
            t0 = time.monotonic()
            post_envelope(c, env, c.nodes[0].addr)
            while not all(api(c, "/api/v1/state", x.addr)["version"] == v for x in c.nodes):
                time.sleep(0.05)
            took = time.monotonic() - t0
            rss = sum(rss_mb(x.pid) for x in c.nodes) / n
            t0, c0 = time.monotonic(), sum(cpu_s(x.pid) for x in c.nodes)
            time.sleep(3)
            idle = (sum(cpu_s(x.pid) for x in c.nodes) - c0) / (time.monotonic() - t0) / n
            victim = c.nodes[-1]
            kill_node(victim)
            t0 = time.monotonic()
            while not all(states(c, x.addr).get(victim.name) == "dead" for x in c.nodes[:-1]):
                time.sleep(0.05)
            dead = time.monotonic() - t0
            print(f"{n:6d}  {took:16.2f}s  {rss:14.1f}  {idle:14.1%}   "
                  f"SIGKILL->dead everywhere {dead:.2f}s")
        finally:
            cluster_down(d)
