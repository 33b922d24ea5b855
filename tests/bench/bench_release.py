"""How a release spreads (printed): N agents on loopback, only n1 seeded with a 20 MB
artifact (incompressible, like a wheelhouse), a state naming it pushed; time until every
node holds a verified copy, and how many copies each node served (the operator's n1 must
not serve them all).
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_release.py"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import cluster_down, cluster_up
from agent.node.releases import ReleaseStore, pack
from support.agents import GOSSIP, api, post_envelope, wait_for
from support.wheels import make_wheel

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("n", [10, 20])
def test_bench_release_spread(tmp_path, n):
    make_wheel(tmp_path / "wh", "mycelium", "9.0.0", {"agent/__init__.py": b""})
    make_wheel(tmp_path / "wh", "blob", "1.0", {"blob/data.bin": os.urandom(20 << 20)})
    path, sha, _ = pack(tmp_path / "wh", tmp_path / "dist")
    c = cluster_up(tmp_path / "c", n, sclerotia=1, extra_args=GOSSIP, progress=lambda _: None)
    try:
        ReleaseStore(Path(c.nodes[0].data_dir) / "releases").add(path)
        net = NetworkDir(c.network)
        yaml = net.network_yaml.read_text() + f"release: {{version: 9.0.0, sha256: {sha}}}\n"
        t0 = time.monotonic()
        assert post_envelope(c, sign_state(net, yaml.encode())[1], c.nodes[0].addr)[1] == 200

        def holders() -> int:
            return sum((Path(x.data_dir) / "releases" / f"{sha}.tar").exists() for x in c.nodes)

        wait_for(lambda: holders() == n, timeout=300, what="every node to hold it")
        took = time.monotonic() - t0
        served = {x.name: api(c, "/api/v1/node", x.addr)["release"]["served"] for x in c.nodes}
        print(f"\n{n} agents, {path.stat().st_size >> 20} MB artifact: all hold it after "
              f"{took:.1f} s; copies served per node: {served}")
        assert served["n1"] < n - 1 or n <= 2
    finally:
        cluster_down(tmp_path / "c")
