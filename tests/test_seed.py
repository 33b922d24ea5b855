"""Seed spore server: serves the spore, accepts only verified newer ones."""

from __future__ import annotations

import asyncio
import shutil

from aiohttp.test_utils import TestClient, TestServer

from agent.authoring.identity import init_network
from agent.node.seed import publish, seed_app
from support.seeds import seed_dir


def test_serve_get_put(tmp_path):
    net, seed, v1, v2, other = seed_dir(tmp_path)

    async def go():
        async with TestClient(TestServer(seed_app(seed))) as c:
            r = await c.get("/spore.json")
            assert r.status == 200 and await r.read() == v1
            assert (await c.put("/spore.json", data=v2)).status == 200
            assert (await c.get("/spore.json")).status == 200
            r = await c.put("/spore.json", data=v1)  # older: refused as stale
            assert r.status == 409 and "not newer" in (await r.json())["error"]
            r = await c.put("/spore.json", data=other)  # another network
            assert r.status == 403
            r = await c.put("/spore.json", data=v2[:-20])  # truncated: malformed
            assert r.status == 400
        assert (seed / "spore.json").read_bytes() == v2

    asyncio.run(go())


def test_publish_to_path(tmp_path):
    net = init_network(tmp_path / "net", "home")
    asyncio.run(publish(str(tmp_path / "out.json"), net.spore_json.read_bytes()))
    assert (tmp_path / "out.json").read_bytes() == net.spore_json.read_bytes()


def test_leader_republishes_over_mutual_tls(tmp_path):
    """What the Raft leader does (agent/node/backbone.py): sign the spore with its node key and
    PUT it to `seed serve --tls`, which wants a client certificate from the network CA.
    Another network's node is refused at the TLS layer."""
    import json

    from aiohttp import web

    from agent.authoring.bootstrap import bootstrap_first_node
    from agent.errors import PeerError
    from agent.lab.cluster import free_port_pair
    from agent.node.datadir import NodeDir
    from agent.node.seed import republish, seed_server_context
    from agent.trust import pki
    from agent.trust.spore import load_spore, verify_spore

    net = init_network(tmp_path / "net", "home")
    seed = tmp_path / "seed"
    seed.mkdir()
    for f in ("roots/1.root.json", "ca.crt", "spore.json"):
        shutil.copy(net.path / f, seed / f.split("/")[-1].replace("1.root", "root"))
    key = pki.new_private_key()
    (seed / "server.key").write_bytes(key)
    (seed / "server.crt").write_bytes(pki.issue_certificate(
        net.ca_key.read_bytes(), net.ca_crt.read_bytes(), pki.make_csr(key, "seed"),
        node_name="seed", role="hypha", network_id=net.root().network_id,
        addresses=["127.0.0.1"]))
    held = load_spore(net.spore_json.read_bytes()).version
    node = NodeDir(tmp_path / "n1")
    bootstrap_first_node(net, node.path, "n1", "127.0.0.1:7000")
    stranger_net = init_network(tmp_path / "other", "home")
    stranger = NodeDir(tmp_path / "s1")
    bootstrap_first_node(stranger_net, stranger.path, "s1", "127.0.0.1:7100")
    port = free_port_pair()
    url = f"https://127.0.0.1:{port}/spore.json"

    async def go():
        runner = web.AppRunner(seed_app(seed))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=seed_server_context(seed))
        await site.start()
        try:
            version = await republish(node, [url], ["127.0.0.1:7000"])
            try:
                await republish(stranger, [url], [])
                raise AssertionError("a node of another network published")
            except PeerError:
                pass
        finally:
            await runner.cleanup()
        return version

    version = asyncio.run(go())
    assert version == held + 1
    data = (seed / "spore.json").read_bytes()
    spore, _ = verify_spore(data, net.root(), ca_pem=net.ca_crt.read_bytes())
    assert spore.version == version and spore.bootstrap == ("127.0.0.1:7000",)
    assert json.loads(data)["signatures"][0]["keyid"] == "node"
