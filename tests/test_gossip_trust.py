"""Gossip speaks only for itself (issue 18 item 1), against three real agents on loopback.

A certificate is a licence to speak for its own node only: the operator's client-only
certificate cannot gossip at all, a node certificate cannot rewrite what another node
signed about itself, and the Primary registry takes no member it never saw in a TLS
handshake. A record another node signed, relayed, is still taken (SWIM needs relays).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.authoring.netdir import NetworkDir
from agent.client import PeerClient
from agent.gossip.latent import MSG_PATH
from agent.lab.cluster import Cluster
from agent.node.datadir import NodeDir
from agent.tls import client_context
from agent.trust import pki
from agent.trust.encoding import canonical
from agent.trust.records import Proof, self_part
from support.agents import GOSSIP, api, call, leader_view, wait_for

FORGED_META = {"role": "sclerotium", "version": 999999, "sha256": "", "status": {},
               "fp": "", "pv": 0, "raft": {"addr": "127.0.0.1:3", "leader": True, "pv": 0}}


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    c = start_cluster(3, sclerotia=1, extra_args=GOSSIP)
    wait_for(lambda: all(len(api(c, "/api/v1/members", n.addr)) == 3 for n in c.nodes),
             what="every node to see the other two")
    wait_for(lambda: (v := leader_view(c)) and len(v["members"]) == 3, timeout=40,
             what="the leader to register the three nodes")
    return c


def names(c: Cluster, addr: str) -> set[str]:
    return {m["name"] for m in api(c, "/api/v1/members", addr)}


def member(c: Cluster, addr: str, name: str) -> dict[str, Any]:
    return next(m for m in api(c, "/api/v1/members", addr) if m["name"] == name)


def events(c: Cluster, addr: str) -> list[dict[str, Any]]:
    return api(c, "/api/v1/events?n=200", addr)


def message(sender: str, members: list[dict[str, Any]], type_: str = "sync",
            everything: bool = False) -> bytes:
    """A gossip message (agent/gossip/wire.py); `everything`: a sync asking for every
    record the receiver holds (one bucket, all of it)."""
    d: dict[str, Any] = {"t": type_, "f": sender, "m": [record(m) for m in members]}
    return canonical({**d, "w": [1, [0]]} if everything else d)


def record(m: dict[str, Any]) -> list[Any]:
    r = [m["name"], m["addr"], m["incarnation"], m["state"], m["meta_version"], m["meta"]]
    return r + [m["proof"]] if "proof" in m else r


def as_dict(r: list[Any]) -> dict[str, Any]:
    keys = ("name", "addr", "incarnation", "state", "meta_version", "meta", "proof")
    return dict(zip(keys, r, strict=False))


def as_node(c: Cluster, name: str, addr: str, data: bytes) -> tuple[int, bytes]:
    """POST a gossip message to `addr` with node `name`'s own certificate."""
    node = NodeDir(Path(next(n for n in c.nodes if n.name == name).data_dir))

    async def go() -> tuple[int, bytes]:
        async with PeerClient(client_context(node.crt, node.key, node.ca_crt)) as peers:
            r = await peers.request("POST", f"https://{addr}{MSG_PATH}", data=data)
            return r.status, r.body

    return asyncio.run(go())


def test_the_operator_certificate_cannot_gossip(cluster: Cluster):
    fake = {"addr": "127.0.0.1:1", "incarnation": 1, "state": "alive", "meta": FORGED_META,
            "meta_version": 1}
    attack = message("operator", [{"name": "ghost", **fake}, {"name": "operator", **fake}])
    net = NetworkDir(cluster.network)
    for n in cluster.nodes:
        _, status, body = call(net, [n.addr], "POST", MSG_PATH, attack)
        assert status == 403 and "cannot gossip" in body["error"], body
    _, status, _ = call(net, [cluster.nodes[0].addr], "POST", MSG_PATH, attack)  # replayed
    assert status == 403
    time.sleep(2)  # ten gossip rounds: time for anything that got in to spread
    for n in cluster.nodes:
        assert names(cluster, n.addr) == {"n1", "n2", "n3"}
    view = leader_view(cluster)
    assert view is not None and set(view["members"]) == {"n1", "n2", "n3"}


def test_a_node_certificate_speaks_only_for_its_node(cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    # as itself, n3 may speak; the reply carries n1's and n2's records, as each signed them
    status, reply = as_node(cluster, "n3", n1.addr, message("n3", [], everything=True))
    assert status == 200
    signed = {m["name"]: m for m in map(as_dict, json.loads(reply)["m"])}
    assert signed["n1"]["proof"]["signed"] == "alive"
    # ... but not under another name
    status, _ = as_node(cluster, "n3", n2.addr, message("n1", []))
    assert status == 403

    before = {n.name: member(cluster, n.addr, "n1")["version"] for n in cluster.nodes}
    n3_key = serialization.load_pem_private_key(
        NodeDir(Path(n3.data_dir)).key.read_bytes(), password=None)
    assert isinstance(n3_key, ec.EllipticCurvePrivateKey)
    n1_rec = signed["n1"]
    meta = {**FORGED_META, "role": "hypha"}
    forged = dict(n1_rec, meta=meta, incarnation=n1_rec["incarnation"] + 1)
    unsigned = {k: v for k, v in forged.items() if k != "proof"}
    part = self_part("n1", forged["addr"], forged["incarnation"], "alive", meta,
                     forged["meta_version"])
    by_n3 = dict(forged, proof=Proof("alive", n3_key.sign(part, ec.ECDSA(hashes.SHA256())),
                                     pki.to_der(NodeDir(Path(n3.data_dir)).crt.read_bytes())
                                     ).wire())
    for record in (forged, unsigned, by_n3):  # n1's signature kept, none, n3's own
        status, _ = as_node(cluster, "n3", n2.addr, message("n3", [record]))
        assert status == 200  # the message is n3's to send; the record is dropped
    time.sleep(2)
    after = {n.name: member(cluster, n.addr, "n1") for n in cluster.nodes}
    assert {k: v["version"] for k, v in after.items()} == before
    assert all(m["role"] == "sclerotium" and not m["addr"].endswith(":1")
               for m in after.values())
    assert any(e["kind"] == "forged" for e in events(cluster, n2.addr))

    # a rumour about n2, on the record n2 signed, relayed by n3: taken (n2 then refutes)
    rumour = dict(signed["n2"], state="suspect")
    status, _ = as_node(cluster, "n3", n1.addr, message("n3", [rumour]))
    assert status == 200
    wait_for(lambda: any(e["kind"] == "refuted" for e in events(cluster, n2.addr)),
             what="n2 to refute the relayed suspicion")
    wait_for(lambda: member(cluster, n1.addr, "n2")["state"] == "alive",
             what="n1 to see n2 alive again")
