"""The API and the backbone driven by small fake hosts: each needs only the Protocol it
declares (api.NodeHost, backbone.BackboneHost), never the daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.errors import RollbackError, TrustError
from agent.gossip.member import MemberView, PeerMeta, RaftMeta
from agent.node import api
from agent.node.backbone import Backbone
from agent.node.datadir import NodeDir, NodeIdentity
from agent.node.events import EventLog
from agent.node.seed import SeedLog
from agent.node.vm.replica import ReplicaStore
from agent.node.vm.spec import VmPaths

IDENT = NodeIdentity("n1", "rhizomorph", "net", "127.0.0.1:7000")
LEADER = MemberView("n2", "127.0.0.1:7100", "alive", 1,
                    PeerMeta("sclerotium", 3, raft=RaftMeta("127.0.0.1:7102", True, 0,
                                                            ("127.0.0.1:7102",))))


class FakeNode:
    """api.NodeHost and backbone.BackboneHost, from plain attributes."""

    def __init__(self) -> None:
        self.identity, self.events, self.peer_ssl, self.state = IDENT, EventLog(), None, None
        self.held_version, self.held_sha256 = 3, "ab"
        self.rows: list[MemberView] = [LEADER]
        self.seed_log = SeedLog()
        self.asked: list[str] = []
        self.vm_dirs: dict[str, Path] = {}
        self.replicas: dict[str, ReplicaStore] = {}

    def node_info(self) -> dict[str, Any]:
        return {"name": self.identity.name}

    def members(self) -> list[MemberView]:
        return self.rows

    def envelope(self) -> bytes | None:
        return None

    async def accept_envelope(self, data: bytes, source: str) -> Any:
        raise RollbackError(f"{data!r} from {source} is old")

    def convergence(self) -> dict[str, Any]:
        return {}

    def share_info(self) -> dict[str, Any]:
        return {}

    def k3s_token_local(self) -> str | None:
        return None

    def primary_view(self) -> dict[str, Any] | None:
        return None

    def vm_status(self) -> list[dict[str, Any]]:
        return [{"name": n, "state": "running"} for n in self.vm_dirs]

    def vm_paths(self, name: str) -> VmPaths | None:
        return VmPaths(self.vm_dirs[name]) if name in self.vm_dirs else None

    def vm_backups(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.replicas.values()]

    async def offer_checkpoint(self, name: str, frame: bytes, by: str) -> int | None:
        if by != "n2":
            raise TrustError(f"node {by} is not the primary of VM {name}")
        if name not in self.replicas:
            raise LookupError(f"not a backup of {name}")
        held = self.replicas[name].offer(frame)
        return None if held is None else held.seq

    async def hand_off_vm(self, name: str, to: str) -> dict[str, Any]:
        if name not in self.vm_dirs:
            raise LookupError(f"VM {name} is not run and replicated here")
        if to != "n3":
            raise ValueError(f"node {to} is not a live backup of VM {name} here yet")
        self.asked.append(f"handoff {name} to {to}")
        return {"seq": 7, "started": 100.0, "migrate_s": 0.4}

    async def thaw_vm(self, name: str) -> None:
        self.asked.append(f"thaw {name}")

    async def move_vm(self, name: str, to: str, role: str) -> int:
        if to == "far":
            raise LookupError("n1 is not the Raft leader with a majority")
        if to == "n2":
            raise ValueError(f"VM {name} already runs on {to}")
        self.asked.append(f"move {name} to {to} as {role}")
        return 12

    async def promote(self, secret: str, by: str) -> None:
        self.asked.append(f"promote by {by}")

    async def demote(self, proof: str, by: str) -> None:
        self.asked.append(f"demote by {by}")

    def on_primary(self, version: int, placement: dict[str, Any]) -> None:
        self.asked.append(f"placement v{version}")

    def may_place(self) -> bool:
        return False

    def live(self) -> list[Any]:
        return []

    def refresh_meta(self) -> None:
        self.asked.append("refresh")

    def seen_in_handshake(self, fp: str) -> bool:
        return True


def test_api_routes_answer_from_the_host():
    async def run() -> None:
        host = FakeNode()
        app = web.Application()
        app.add_routes(api.routes(host))
        async with TestClient(TestServer(app)) as c:
            assert await (await c.get(f"{api.API}/state")).json() == {"version": 3,
                                                                      "sha256": "ab"}
            rows = await (await c.get(f"{api.API}/members")).json()
            assert [MemberView.from_row(r) for r in rows] == [LEADER]
            assert (await c.get(f"{api.API}/envelope")).status == 404
            assert (await c.post(f"{api.API}/envelope", data=b"{}")).status == 409
            assert (await c.get(f"{api.API}/primary")).status == 404
            assert (await c.get(f"{api.API}/k3s-token")).status == 404
            # promotion needs the leader's client certificate: none over plain HTTP
            r = await c.post(f"{api.API}/primary/promote", json={"secret": "0" * 64})
            assert r.status == 403 and host.asked == []
    asyncio.run(run())


def test_vm_routes_serial_tail_and_console(tmp_path):
    """The console relays both ways between the API's WebSocket and the VM's serial socket
    (here a unix socket server standing in for QEMU's), one session at a time."""
    async def run() -> None:
        host = FakeNode()
        host.vm_dirs["tiny"] = tmp_path
        paths = VmPaths(tmp_path)
        paths.serial_log.write_bytes(b"x" * 10000 + b"tiny-counter 7\n")
        typed: list[bytes] = []

        async def guest(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"tiny-counter 8\n")
            typed.append(await r.readexactly(3))
            w.write(b"echo:" + typed[-1])
            await w.drain()
            w.close()  # the VM went away

        app = web.Application()
        app.add_routes(api.routes(host))
        async with TestClient(TestServer(app)) as c:
            assert (await (await c.get(f"{api.API}/vms")).json())["vms"] == [
                {"name": "tiny", "state": "running"}]
            body = await (await c.get(f"{api.API}/vms/tiny/serial?bytes=15")).json()
            assert body["text"] == "tiny-counter 7\n"
            assert (await c.get(f"{api.API}/vms/nope/serial")).status == 404
            assert (await c.get(f"{api.API}/vms/tiny/console")).status == 503  # no socket
            server = await asyncio.start_unix_server(guest, str(paths.serial))
            async with c.ws_connect(f"{api.API}/vms/tiny/console") as ws:
                got = (await ws.receive_bytes()).endswith(b"tiny-counter 7\n")
                assert (await c.get(f"{api.API}/vms/tiny/console")).status == 409  # busy
                await ws.send_bytes(b"ls\r")
                seen = b""
                while b"echo:ls" not in seen:
                    seen += await asyncio.wait_for(ws.receive_bytes(), 5)
                assert got and b"tiny-counter 8" in seen and typed == [b"ls\r"]
                assert (await asyncio.wait_for(ws.receive(), 5)).type.name == "CLOSE"
            server.close()
    asyncio.run(run())


def as_peer(host: FakeNode, peer: dict[str, Any]) -> web.Application:
    """The API of `host` as the certificate `peer["who"]` calls it (what the TLS layer
    sets on each request)."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        request["peer"] = peer["who"]
        return await handler(request)

    app = web.Application(middlewares=[middleware])
    app.add_routes(api.routes(host))
    return app


@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
def test_checkpoint_route_takes_good_frames_and_refuses_the_rest(tmp_path):
    from support.checkpoints import frame

    async def run() -> None:
        host = FakeNode()
        host.replicas["db"] = ReplicaStore(tmp_path, "db")
        peer = {"who": SimpleNamespace(node_name="n2", client_only=False)}
        app = as_peer(host, peer)
        url = f"{api.API}/vms/db/checkpoint"
        async with TestClient(TestServer(app)) as c:
            r = await c.post(url, data=frame(seq=4, base=0, previous=None))
            assert r.status == 200 and (await r.json()) == {"seq": 4}
            r = await c.post(url, data=frame(seq=5, base=4)[:-3])
            assert r.status == 409 and "sha256" in (await r.json())["error"]
            assert (await c.post(f"{api.API}/vms/other/checkpoint", data=b"x")).status == 404
            body = await (await c.get(f"{api.API}/vms")).json()
            assert body["backups"][0]["seq"] == 4 and body["backups"][0]["refused"] == 1
            peer["who"] = SimpleNamespace(node_name="n3", client_only=False)  # not primary
            assert (await c.post(url, data=frame(seq=9, base=0, previous=None))).status == 403
            peer["who"] = SimpleNamespace(node_name="op", client_only=True)  # an operator
            assert (await c.post(url, data=frame(seq=9, base=0, previous=None))).status == 403
            assert host.replicas["db"].held.seq == 4
    asyncio.run(run())


@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
def test_planned_move_routes_take_the_operator_only(tmp_path):
    """`mycelium vm migrate`'s calls: the handoff on the primary, the commit on the leader
    (421 elsewhere, so the CLI asks the next sclerotium), a thaw when it was refused; a
    node's certificate may do none of them."""
    async def run() -> None:
        host = FakeNode()
        host.vm_dirs["tiny"] = tmp_path
        peer = {"who": SimpleNamespace(node_name="operator", client_only=True)}
        app = as_peer(host, peer)
        move, handoff = f"{api.API}/primary/move", f"{api.API}/vms/tiny/handoff"
        async with TestClient(TestServer(app)) as c:
            r = await c.post(handoff, json={"to": "n3"})
            assert r.status == 200 and (await r.json())["seq"] == 7
            assert (await c.post(handoff, json={"to": "n4"})).status == 409
            assert (await c.post(f"{api.API}/vms/nope/handoff", json={"to": "n3"})).status \
                == 404
            assert (await c.post(handoff, json={"to": 3})).status == 400
            r = await c.post(move, json={"vm": "tiny", "to": "n3", "as": "primary"})
            assert r.status == 200 and (await r.json()) == {"placement_version": 12}
            assert (await c.post(move, json={"vm": "tiny", "to": "far", "as": "backup"})) \
                .status == 421
            r = await c.post(move, json={"vm": "tiny", "to": "n2", "as": "primary"})
            assert r.status == 409 and "already runs on n2" in (await r.json())["error"]
            assert (await c.post(move, json={"vm": "tiny"})).status == 400
            assert (await c.post(f"{api.API}/vms/tiny/thaw", json={})).status == 200
            asked = list(host.asked)
            for who in (SimpleNamespace(node_name="n2", client_only=False),
                        SimpleNamespace(node_name="ops", client_only=True)):
                peer["who"] = who
                for url, body in ((move, {"vm": "tiny", "to": "n3", "as": "primary"}),
                                  (handoff, {"to": "n3"}),
                                  (f"{api.API}/vms/tiny/thaw", {})):
                    r = await c.post(url, json=body)
                    assert r.status == 403 and "operator" in (await r.json())["error"]
            assert asked == host.asked == ["handoff tiny to n3", "move tiny to n3 as primary",
                                           "thaw tiny"]
    asyncio.run(run())


def test_backbone_starts_with_saved_members_else_the_gossiped_leaders(tmp_path):
    host, node = FakeNode(), NodeDir(tmp_path)
    bb = Backbone(host, node, IDENT, IDENT.listen)
    assert bb._initial_members() == ["127.0.0.1:7102"]
    node.sclerotium_dir.mkdir()
    node.write_raft_members(["127.0.0.1:7202"])
    assert bb._initial_members() == ["127.0.0.1:7202"]


def test_backbone_waits_for_a_leader_before_starting_raft(tmp_path):
    host = FakeNode()
    host.rows = [MemberView("n3", "127.0.0.1:7300", "alive")]
    bb = Backbone(host, NodeDir(tmp_path), IDENT, IDENT.listen)
    asyncio.run(bb.tick())
    assert bb.store is None and host.asked == [] and bb.meta() == RaftMeta()


def test_node_dir_keeps_each_raft_and_placement_file(tmp_path):
    node = NodeDir(tmp_path)
    assert (node.read_raft_members(), node.read_placement(), node.read_k3s_token()) == \
        (None, None, "")
    node.write_raft_secret(b"s" * 64)
    node.write_raft_members(["h:3"])
    node.write_placement(4, {"shares": {}})
    node.write_k3s_token("tok")
    assert node.has_raft_secret() and node.read_raft_secret() == b"s" * 64
    assert (node.raft_secret.stat().st_mode & 0o777, node.k3s_token.stat().st_mode & 0o777) \
        == (0o600, 0o600)
    assert (node.read_raft_members(), node.read_placement(), node.read_k3s_token()) == \
        (["h:3"], (4, {"shares": {}}), "tok")
    node.placement_json.write_text('{"version": 1, "placement": []}')
    assert node.read_placement() is None
    node.forget_raft()
    assert not node.has_raft_secret() and node.read_raft_members() is None


def test_the_leader_registers_only_certificates_seen_in_a_handshake(tmp_path):
    """Role and fingerprint as gossip verified them; a certificate no peer showed this node
    in a TLS handshake is not registered (issue 18: a gossiped member is not a peer)."""
    from types import SimpleNamespace

    registered: list[tuple[str, str, str, list[str]]] = []

    async def register(name: str, fp: str, role: str, addrs: list[str]) -> None:
        registered.append((name, fp, role, addrs))

    host = FakeNode()
    host.rows = [MemberView("n3", "127.0.0.1:7300", "alive", 1, PeerMeta("rhizomorph", fp="f3")),
                 MemberView("ghost", "127.0.0.1:1", "alive", 1, PeerMeta("sclerotium", fp="fg")),
                 MemberView("bare", "127.0.0.1:2", "alive", 1, PeerMeta("sclerotium"))]
    host.seen_in_handshake = lambda fp: fp == "f3"  # type: ignore[method-assign]
    bb = Backbone(host, NodeDir(tmp_path), IDENT, IDENT.listen)
    bb.store = SimpleNamespace(members={})  # type: ignore[assignment]
    bb.primary = SimpleNamespace(register=register)  # type: ignore[assignment]
    for _ in range(3):
        asyncio.run(bb._register())
    assert registered == [("n3", "f3", "rhizomorph", ["127.0.0.1:7300"])] * 3
