"""The Seed spore outside the network: publish to a path or URL, and serve one.

`mycelium seed serve DIR` keeps `DIR/spore.json` and `DIR/root.json` (the trust anchor it
checks updates against). GET /spore.json is public (the spore is signed); PUT needs a
client certificate from the network CA (checked at the TLS layer when --tls is given) and a
spore that verifies against the root and is newer than the one held.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import tls
from agent.client import PeerClient
from agent.errors import DataError, MyceliumError, PeerError, TooLargeError, TransportError
from agent.node.datadir import NodeDir
from agent.serve import read_body, refusal
from agent.statefile import atomic_write
from agent.trust.rules import trust_initial_root
from agent.trust.signed import now_utc
from agent.trust.spore import MAX_SPORE_BYTES, load_spore, verify_spore


class SeedLog:
    """When each seed spore location was last read and last written by this node, and
    how it went (the dashboard's backbone view): location -> {"read"|"written": {"time",
    "ok", "detail"}}."""

    def __init__(self) -> None:
        self.locations: dict[str, dict[str, dict[str, Any]]] = {}

    def note(self, location: str, what: str, ok: bool, detail: str) -> None:
        self.locations.setdefault(location, {})[what] = {"time": time.time(), "ok": ok,
                                                         "detail": detail[:200]}

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {loc: dict(v) for loc, v in self.locations.items()}


async def read_source(src: str, cap: int = MAX_SPORE_BYTES, timeout: float = 10.0,
                      ssl_ctx: ssl.SSLContext | None = None) -> bytes:
    """A seed spore from a path or an http(s) URL, size-capped."""
    if src.startswith(("http://", "https://")):
        async with PeerClient(ssl_ctx if src.startswith("https://") else None,
                              timeout=timeout) as peers:
            try:
                r = await peers.request("GET", src, cap=cap)
            except PeerError as e:
                raise PeerError(f"cannot fetch {e}") from e
            except TooLargeError as e:
                raise TooLargeError(f"seed spore {src} is over {cap} bytes") from e
        if r.status != 200:
            raise PeerError(f"{src} answered HTTP {r.status}")
        data = r.body
    else:
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise TransportError(f"cannot read seed spore {src}: {e.strerror}") from e
    if len(data) > cap:
        raise DataError(f"seed spore {src} is over {cap} bytes")
    return data


def held_version(data: bytes | None) -> int:
    if not data:
        return 0
    return load_spore(data).version


async def publish(location: str, data: bytes, ssl_ctx: ssl.SSLContext | None = None) -> None:
    """Write a spore to a file path (atomically) or PUT it to an http(s) URL."""
    if location.startswith(("http://", "https://")):
        async with PeerClient(ssl_ctx) as peers:
            try:
                r = await peers.request("PUT", location, data=data)
            except (PeerError, DataError) as e:
                raise PeerError(f"cannot publish to {e}") from e
        if r.status != 200:
            raise PeerError(f"{location} refused the spore: HTTP {r.status} {r.text()[:200]}")
    else:
        try:
            atomic_write(Path(location), data)
        except OSError as e:
            raise TransportError(f"cannot write {location}: {e.strerror}") from e


async def republish(node: NodeDir, locations: list[str], bootstrap: list[str],
                    seed_log: SeedLog | None = None) -> int:
    """The Raft leader's copy of the seed spore: this node's key signs it (no node holds a
    root key), its version is above what every readable location holds, and it goes to
    every location (each write noted in `seed_log`). Returns the version written."""
    import json

    from agent.trust.rules import MAX_ROOT_BYTES, parse_signed
    from agent.trust.spore import new_spore, sign_spore_with_node

    ctx = node_client_context(node)
    held = 0
    for loc in locations:
        try:
            held = max(held, held_version(await read_source(loc, ssl_ctx=ctx)))
        except MyceliumError:
            pass  # unreadable or absent: written below
    envelope = node.store.envelope()
    chain = [parse_signed(b, "root document", MAX_ROOT_BYTES).to_dict()
             for b in node.root_chain()]
    spore = new_spore(chain, node.root(), held + 1, bootstrap,
                      json.loads(envelope) if envelope else None)
    data = sign_spore_with_node(spore, node.key.read_bytes(), node.crt.read_bytes()).to_bytes()
    errors = []
    for loc in locations:
        try:
            await publish(loc, data, ctx if loc.startswith("https://") else None)
        except MyceliumError as e:
            errors.append(str(e))
            if seed_log is not None:
                seed_log.note(loc, "written", False, str(e))
        else:
            if seed_log is not None:
                seed_log.note(loc, "written", True, f"v{spore.version}")
    if len(errors) == len(locations):
        raise PeerError("; ".join(errors))
    return spore.version


def node_client_context(node: NodeDir) -> ssl.SSLContext:
    """For an https location: the node's own certificate as the network's credential; the
    server is checked against the system store and the network CA (`seed serve --tls` may
    use a certificate from it), with its host name."""
    return tls.web_client_context(node.crt, node.key, node.ca_crt)


def seed_app(directory: Path) -> web.Application:
    anchor = trust_initial_root((directory / "root.json").read_bytes(), now_utc(),
                                check_expires=False)
    ca = directory / "ca.crt"
    spore = directory / "spore.json"

    async def get(_: web.Request) -> web.Response:
        if not spore.exists():
            return web.json_response({"error": "no spore published yet"}, status=404)
        return web.Response(body=spore.read_bytes(), content_type="application/json")

    async def put(request: web.Request) -> web.Response:
        data = await read_body(request, MAX_SPORE_BYTES)
        try:
            held = held_version(spore.read_bytes() if spore.exists() else None)
            verify_spore(data, anchor, now_utc(), ca.read_bytes() if ca.exists() else None,
                         held_version=held)
        except DataError as e:
            return refusal(e)
        atomic_write(spore, data)
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=MAX_SPORE_BYTES + 1024)
    app.add_routes([web.get("/spore.json", get), web.put("/spore.json", put)])
    return app


def seed_server_context(directory: Path) -> ssl.SSLContext:
    """TLS with client certificates from the network CA required (for PUT)."""
    return tls.server_context(directory / "server.crt", directory / "server.key",
                              directory / "ca.crt", tls13=False)
