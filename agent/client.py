"""A hypha: a client of the network (CLI, TUI, an app) that talks to several nodes.

It speaks mutual TLS with the operator's certificate and fails over: each request goes to
the first node that answers, and a node that fails is tried last next time.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import DataError, MyceliumError, PeerError

MAX_REPLY_BYTES = 4 << 20


async def fetch_k3s_token(addrs: list[str], ctx: ssl.SSLContext) -> str:
    """The K3s token from the first sclerotium in `addrs` that gives it, or ""."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for addr in addrs:
            try:
                async with s.get(f"https://{addr}/api/v1/k3s-token", ssl=ctx) as r:
                    if r.status == 200:
                        token = (await r.json()).get("token")
                        if isinstance(token, str) and len(token) == 64:
                            return token
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError):
                continue
    return ""


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))  # only this network's CA, no system store
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False  # nodes are addressed by IP:port; the CA is what we pin
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_after_handshake(ctx: ssl.SSLContext,
                          check: Callable[[bytes], None]) -> ssl.SSLContext:
    """Run `check(peer DER)` inside the handshake, on both client and server sides.

    The CA chain is verified by OpenSSL; revocation (fingerprints listed in network.yaml,
    which change at run time) cannot be, so a failing check aborts the handshake here.
    """

    class CheckingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            if der is None:
                raise ssl.SSLError("peer presented no certificate")
            try:
                check(der)
            except MyceliumError as e:
                raise ssl.SSLError(f"peer refused: {e}") from e

    ctx.sslobject_class = CheckingSSLObject
    return ctx


class Hypha:
    def __init__(self, addresses: list[str], ssl_ctx: ssl.SSLContext,
                 timeout: float = 10.0) -> None:
        if not addresses:
            raise DataError("no node addresses given; pass --to HOST:PORT[,HOST:PORT...]")
        self.addresses = list(addresses)
        self.ssl = ssl_ctx
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(5.0, timeout))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Hypha:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    async def call(self, method: str, path: str, data: bytes | None = None,
                   addr: str | None = None) -> tuple[str, int, Any]:
        """(address that answered, HTTP status, JSON body) from the first node that answers."""
        assert self._session is not None
        order = [addr] if addr else list(self.addresses)
        errors = []
        for a in order:
            try:
                async with self._session.request(
                        method, f"https://{a}{path}", data=data, ssl=self.ssl,
                        headers={"Content-Type": "application/json"}) as r:
                    body = await r.content.read(MAX_REPLY_BYTES + 1)
                    if len(body) > MAX_REPLY_BYTES:
                        raise PeerError(f"{a}: reply over {MAX_REPLY_BYTES} bytes")
                    return a, r.status, json.loads(body) if body else None
            except (aiohttp.ClientError, TimeoutError, ValueError, ssl.SSLError) as e:
                errors.append(f"{a}: {type(e).__name__}: {e}".rstrip(": "))
                if not addr:  # fail over: demote the failed node to the end
                    self.addresses.remove(a)
                    self.addresses.append(a)
        raise PeerError("no node answered (" + "; ".join(errors) + ")")

    async def get(self, path: str, addr: str | None = None) -> Any:
        a, status, body = await self.call("GET", path, addr=addr)
        if status != 200:
            raise PeerError(f"{a} answered {status} for {path}: {_err(body)}")
        return body


def _err(body: Any) -> str:
    return body.get("error", "") if isinstance(body, dict) else str(body)[:200]
