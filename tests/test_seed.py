"""Seed spore server: serves the spore, accepts only verified newer ones."""

from __future__ import annotations

import asyncio
import shutil

from aiohttp.test_utils import TestClient, TestServer

from agent.bootstrap import add_bootstrap_address
from agent.identity import init_network
from agent.seed import publish, seed_app


def test_serve_get_put(tmp_path):
    net = init_network(tmp_path / "net", "home")
    seed = tmp_path / "seed"
    seed.mkdir()
    for f in ("roots/1.root.json", "ca.crt", "spore.json"):
        shutil.copy(net.path / f, seed / f.split("/")[-1].replace("1.root", "root"))
    v1 = net.spore_json.read_bytes()
    add_bootstrap_address(net, "10.0.0.1:7946")
    v2 = net.spore_json.read_bytes()
    other = init_network(tmp_path / "other", "home").spore_json.read_bytes()

    async def go():
        async with TestClient(TestServer(seed_app(seed))) as c:
            r = await c.get("/spore.json")
            assert r.status == 200 and await r.read() == v1
            assert (await c.put("/spore.json", data=v2)).status == 200
            assert (await c.get("/spore.json")).status == 200
            r = await c.put("/spore.json", data=v1)  # older: refused
            assert r.status == 403 and "not newer" in (await r.json())["error"]
            r = await c.put("/spore.json", data=other)  # another network
            assert r.status == 403
            r = await c.put("/spore.json", data=v2[:-20])  # truncated
            assert r.status == 403
        assert (seed / "spore.json").read_bytes() == v2

    asyncio.run(go())


def test_publish_to_path(tmp_path):
    net = init_network(tmp_path / "net", "home")
    asyncio.run(publish(str(tmp_path / "out.json"), net.spore_json.read_bytes()))
    assert (tmp_path / "out.json").read_bytes() == net.spore_json.read_bytes()
