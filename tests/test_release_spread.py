"""A release spreads peer to peer: four real agents on loopback, one seeded with the
artifact by the operator, one holding a corrupt copy. The others refuse the corrupt copy
(wrong hash, one event naming the peer) and take the artifact from a peer that holds it
good; nobody fetches it from anywhere but the network."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.client import PeerClient
from agent.lab.cluster import Cluster
from agent.node.datadir import NodeDir
from agent.node.releases import file_sha256, pack
from agent.tls import client_context
from support.agents import GOSSIP, api, call, post_envelope, wait_for
from support.wheels import make_wheel


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(4, sclerotia=1, extra_args=GOSSIP)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("rel")
    make_wheel(d / "wh", "mycelium", "9.9.0", {"agent/__init__.py": b"# 9.9.0\n" * 4096})
    make_wheel(d / "wh", "dep", "1.0", {"dep/__init__.py": bytes(range(256)) * 512})
    path, sha, _ = pack(d / "wh", d / "out")
    return path, sha


def held(c: Cluster, name: str, sha: str) -> bool:
    node = next(n for n in c.nodes if n.name == name)
    f = Path(node.data_dir) / "releases" / f"{sha}.tar"
    return f.is_file() and file_sha256(f) == sha


def events(c: Cluster, addr: str) -> list[str]:
    return [e["message"] for e in api(c, "/api/v1/events?n=200", addr)]


def test_release_spreads_from_peers_and_a_corrupt_copy_is_refused(cluster: Cluster, artifact):
    path, sha = artifact
    n1, n2, n3, n4 = cluster.nodes
    # n2 "holds" it, but its copy is corrupt (a flipped byte on disk)
    bad = bytearray(path.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (Path(n2.data_dir) / "releases").mkdir(mode=0o700)
    (Path(n2.data_dir) / "releases" / f"{sha}.tar").write_bytes(bytes(bad))
    wait_for(lambda: all(sha in m["rel"]["held"] for m in api(cluster, "/api/v1/members",
                                                              n3.addr) if m["name"] == "n2"),
             what="n2 to advertise the artifact")
    net = NetworkDir(cluster.network)
    yaml = (net.network_yaml.read_text()
            + f"release: {{version: 9.9.0, sha256: {sha}}}\n").encode()
    _, env = sign_state(net, yaml)
    assert post_envelope(cluster, env, n1.addr)[1] == 200
    # the only holder is n2: n3 and n4 refuse its copy and hold nothing
    for n in (n3, n4):
        wait_for(lambda n=n: any("refused release 9.9.0 from peer " + n2.addr in e
                                 for e in events(cluster, n.addr)),
                 what=f"{n.name} to refuse n2's corrupt copy")
        assert not held(cluster, n.name, sha)
    # the operator seeds n1 (checked like a download); n3 and n4 take it from peers
    subprocess.run([sys.executable, "-m", "agent.cli", "release", "add", str(path),
                    "--data-dir", n1.data_dir], check=True, capture_output=True)
    for n in (n3, n4):
        wait_for(lambda n=n: held(cluster, n.name, sha), timeout=60,
                 what=f"{n.name} to hold the release")
    froms = {n.name: api(cluster, "/api/v1/node", n.addr)["release"] for n in cluster.nodes}
    for n in (n3, n4):
        src = froms[n.name]["fetched_from"][sha]
        assert src.startswith("peer ") and src != f"peer {n2.addr}", froms
    assert not held(cluster, "n2", sha)  # n2's own copy is still the corrupt one
    print("served per node:", {k: v["served"] for k, v in froms.items()})


def test_only_the_operator_may_pause_resume_or_abort_a_rollout(cluster: Cluster):
    """A node's certificate (here n2's, enrolled by token) is refused; the operator's
    reaches the rollout logic (nothing to pause here: 404 or 409, not 403)."""
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    node = NodeDir(Path(n2.data_dir))

    async def as_n2() -> int:
        async with PeerClient(client_context(node.crt, node.key, node.ca_crt)) as peers:
            r = await peers.request("POST", f"https://{n1.addr}/api/v1/rollout",
                                    json_body={"action": "abort"})
            return r.status

    assert asyncio.run(as_n2()) == 403
    _, status, body = call(NetworkDir(cluster.network), [n1.addr], "POST", "/api/v1/rollout",
                           json.dumps({"action": "abort"}).encode())
    assert status in (404, 409), (status, body)
