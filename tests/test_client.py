"""The peer client against a real mutual-TLS aiohttp server on loopback: whole bodies, caps,
deadlines, one error family out, pooled connections that a reset drops."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.client import Hypha, PeerClient
from agent.errors import DataError, PeerError, TooLargeError
from agent.tls import client_context, server_context
from agent.trust import pki

CAP = 1000


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("client-pki")
    ca_key, ca_crt = pki.create_ca("home", "net-a")
    (d / "ca.crt").write_bytes(ca_crt)
    for name in ("server", "client"):
        key = pki.new_private_key()
        crt = pki.issue_certificate(ca_key, ca_crt, pki.make_csr(key, name), node_name=name,
                                    role="rhizomorph", network_id="net-a")
        (d / f"{name}.key").write_bytes(key)
        (d / f"{name}.crt").write_bytes(crt)
    return {"dir": d}


def peer(certs: dict[str, Path], **kw: Any) -> PeerClient:
    d = certs["dir"]
    return PeerClient(client_context(d / "client.crt", d / "client.key", d / "ca.crt"), **kw)


def app() -> web.Application:
    async def get_json(_: web.Request) -> web.Response:
        return web.json_response({"a": 1, "b": [2, 3]})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def echo_json(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()})

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (CAP + 1))

    async def pieces(request: web.Request) -> web.StreamResponse:
        """Chunked, no length announced, written slowly: `n` pieces of 100 bytes."""
        r = web.StreamResponse()
        await r.prepare(request)
        for i in range(int(request.query.get("n", "5"))):
            await r.write(bytes([65 + i % 26]) * 100)
            await asyncio.sleep(0.05)
        await r.write_eof()
        return r

    async def bad(_: web.Request) -> web.Response:
        return web.Response(body=b"{not json", content_type="application/json")

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def missing(_: web.Request) -> web.Response:
        return web.json_response({"error": "no such thing"}, status=404)

    async def port(request: web.Request) -> web.Response:
        """The client's source port: the same one twice means a kept-alive connection."""
        assert request.transport is not None
        return web.json_response(request.transport.get_extra_info("peername")[1])

    a = web.Application()
    a.add_routes([web.get("/json", get_json), web.post("/echo", echo),
                  web.post("/json", echo_json), web.get("/big", big),
                  web.get("/pieces", pieces), web.get("/bad", bad), web.get("/hang", hang),
                  web.get("/missing", missing), web.get("/port", port)])
    return a


@asynccontextmanager
async def serving(certs: dict[str, Path]) -> AsyncIterator[str]:
    d = certs["dir"]
    runner = web.AppRunner(app(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=0.1)
    await runner.setup()
    ctx = server_context(d / "server.crt", d / "server.key", d / "ca.crt")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(certs: dict[str, Path], go: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with serving(certs) as addr:
            return await go(addr)
    return asyncio.run(main())


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_json_and_bytes_round_trip(certs):
    async def go(addr: str) -> None:
        async with peer(certs) as c:
            assert await c.get_json(f"https://{addr}/json") == {"a": 1, "b": [2, 3]}
            assert await c.post_bytes(f"https://{addr}/echo", b"\x00\xffhello") == \
                b"\x00\xffhello"
            assert await c.post_json(f"https://{addr}/json", {"k": [1]}) == {"got": {"k": [1]}}
            assert await c.get_bytes(f"https://{addr}/json") == \
                json.dumps({"a": 1, "b": [2, 3]}).encode()
    run(certs, go)


def test_body_over_the_cap_is_refused(certs):
    async def go(addr: str) -> None:
        async with peer(certs, cap=CAP) as c:
            with pytest.raises(TooLargeError):  # announced by Content-Length
                await c.get_bytes(f"https://{addr}/big")
            assert len(await c.get_bytes(f"https://{addr}/big", cap=CAP + 1)) == CAP + 1
            with pytest.raises(TooLargeError):  # chunked: found while reading
                await c.get_bytes(f"https://{addr}/pieces?n=11")
            assert len(await c.get_bytes(f"https://{addr}/pieces?n=10")) == CAP
    run(certs, go)


def test_body_sent_slowly_in_pieces_is_read_whole(certs):
    async def go(addr: str) -> bytes:
        async with peer(certs) as c:
            return await c.get_bytes(f"https://{addr}/pieces?n=6")
    assert run(certs, go) == b"".join(bytes([65 + i]) * 100 for i in range(6))


def test_connection_refused_and_timeout_are_peer_errors():
    async def go() -> None:
        async with PeerClient(timeout=0.5) as c:
            with pytest.raises(PeerError, match="Cannot connect") as e:
                await c.get_json(f"https://127.0.0.1:{free_port()}/json")
            assert e.value.__cause__ is not None
    asyncio.run(go())


def test_deadline_covers_a_peer_that_never_answers(certs):
    async def go(addr: str) -> None:
        async with peer(certs, timeout=0.3) as c:
            with pytest.raises(PeerError, match="TimeoutError"):
                await c.get_json(f"https://{addr}/hang")
            with pytest.raises(PeerError):  # the deadline covers the body too
                await c.get_bytes(f"https://{addr}/pieces?n=20")
    run(certs, go)


def test_bad_json_is_a_data_error_and_a_status_a_peer_error(certs):
    async def go(addr: str) -> None:
        async with peer(certs) as c:
            with pytest.raises(DataError, match="not JSON"):
                await c.get_json(f"https://{addr}/bad")
            with pytest.raises(PeerError, match="answered HTTP 404: no such thing"):
                await c.get_json(f"https://{addr}/missing")
            r = await c.request("GET", f"https://{addr}/missing")
            assert r.status == 404 and r.json() == {"error": "no such thing"}
    run(certs, go)


def test_a_client_without_the_network_certificate_is_refused_at_tls(certs):
    async def go(addr: str) -> None:
        async with PeerClient(timeout=2) as c:  # system store, no client certificate
            with pytest.raises(PeerError):
                await c.get_json(f"https://{addr}/json")
    run(certs, go)


def test_connections_are_pooled_and_reset_drops_them(certs):
    async def go(addr: str) -> tuple[int, int, int]:
        async with peer(certs) as c:
            first = await c.get_json(f"https://{addr}/port")
            again = await c.get_json(f"https://{addr}/port")
            c.reset()
            fresh = await c.get_json(f"https://{addr}/port")
            await asyncio.sleep(0)  # the dropped session closes in the background
            return first, again, fresh
    first, again, fresh = run(certs, go)
    assert first == again and fresh != first


def test_hypha_fails_over_and_tries_the_failed_node_last(certs):
    async def go(addr: str) -> None:
        dead = f"127.0.0.1:{free_port()}"
        d = certs["dir"]
        ctx = client_context(d / "client.crt", d / "client.key", d / "ca.crt")
        async with Hypha([dead, addr], ctx, timeout=2) as h:
            assert await h.get("/json") == {"a": 1, "b": [2, 3]}
            assert h.addresses == [addr, dead]
            with pytest.raises(PeerError, match="answered 404 for /missing: no such thing"):
                await h.get("/missing")
            with pytest.raises(PeerError, match=f"no node answered \\({dead}: "):
                await h.get("/json", dead)
    run(certs, go)
