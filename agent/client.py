"""All talk to peers: one client that returns parsed data or raises one error family.

`PeerClient` owns one pooled aiohttp session (so a node reuses its connections), puts a
deadline on every request and a byte cap on every reply, and reads a reply whole (a body
that arrives in pieces is not cut short). What goes wrong comes out as `PeerError` (could
not reach the peer, TLS refused, timed out, HTTP status not 200) or `DataError` (the body
is over the cap or does not parse); the aiohttp, ssl and OS errors are their causes.

On it sit `Hypha`, a client of the network (CLI, TUI, an app) that talks to several nodes
with the operator's certificate and fails over: each request goes to the first node that
answers, and a node that fails is tried last next time; and `fetch_k3s_token`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import BusyError, DataError, PeerError, TooLargeError

MAX_REPLY_BYTES = 4 << 20
TIMEOUT = 10.0  # seconds for a whole request, reply body included


def reason(e: BaseException) -> str:
    """One line naming what went wrong: `ClientConnectorError: Cannot connect to ...`."""
    return f"{type(e).__name__}: {e}".rstrip(": ")


@dataclass(frozen=True)
class Reply:
    """A peer's answer, whatever its status; the body is whole and within the cap."""

    url: str
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{self.url}: reply is not JSON ({e})") from e

    def ok(self) -> Reply:
        """This reply if its status is 200, else PeerError naming the status (and the
        peer's `error` field or the start of its body)."""
        if self.status != 200:
            raise PeerError(f"{self.url} answered HTTP {self.status}{_why(self.body)}")
        return self

    def text(self) -> str:
        return self.body.decode(errors="replace")


class PeerClient:
    """Requests to peers over one pooled session with one TLS context.

    An async context manager (or call `close`). `reset` drops the pooled connections so the
    next request handshakes anew: a peer revoked after we connected to it must not keep a
    kept-alive connection.
    """

    def __init__(self, ssl_ctx: ssl.SSLContext | None = None, timeout: float = TIMEOUT,
                 connect_timeout: float | None = None, cap: int = MAX_REPLY_BYTES,
                 unix_socket: str | None = None) -> None:
        self.ssl: ssl.SSLContext | bool = ssl_ctx if ssl_ctx is not None else True
        self.unix_socket = unix_socket  # a local node's read-only API socket (plain HTTP)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.cap = cap
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        old, self._session = self._session, None
        if old is not None:
            await old.close()

    def reset(self) -> None:
        """Drop pooled connections (closed in the background); the next request opens a
        new session."""
        old, self._session = self._session, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            conn = aiohttp.UnixConnector(self.unix_socket) if self.unix_socket else None
            self._session = aiohttp.ClientSession(connector=conn)
        return self._session

    async def request(self, method: str, url: str, data: bytes | None = None,
                      json_body: Any = None, headers: dict[str, str] | None = None,
                      cap: int | None = None, timeout: float | None = None) -> Reply:
        """One request, any status. PeerError if the peer cannot be reached or the deadline
        passes; TooLargeError if the body is over `cap`."""
        cap = self.cap if cap is None else cap
        t = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout,
                                  sock_connect=self.connect_timeout)
        try:
            async with self._get_session().request(method, url, data=data, json=json_body,
                                                   headers=headers, ssl=self.ssl,
                                                   timeout=t) as r:
                return Reply(url, r.status, await _read_capped(r, cap, url))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:  # ssl.SSLError is an OSError
            raise PeerError(f"{url}: {reason(e)}") from e

    async def download(self, url: str, dest: Path, cap: int,
                       timeout: float | None = None) -> str:
        """Stream a 200 reply's body into `dest` (never whole in memory); its SHA-256.
        PeerError as `request`; TooLargeError past `cap`."""
        t = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout,
                                  sock_connect=self.connect_timeout)
        h = hashlib.sha256()
        try:
            async with self._get_session().get(url, ssl=self.ssl, timeout=t) as r:
                if r.status == 503:
                    raise BusyError(f"{url}: busy")
                if r.status != 200:
                    Reply(url, r.status, await _read_capped(r, 4096, url)).ok()
                if r.content_length is not None and r.content_length > cap:
                    raise TooLargeError(f"{url}: reply of {r.content_length} bytes over {cap}")
                size = 0
                with open(dest, "wb") as f:
                    async for chunk in r.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > cap:
                            raise TooLargeError(f"{url}: reply over {cap} bytes")
                        h.update(chunk)
                        f.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise PeerError(f"{url}: {reason(e)}") from e
        return h.hexdigest()

    async def get_bytes(self, url: str, cap: int | None = None,
                        timeout: float | None = None) -> bytes:
        return (await self.request("GET", url, cap=cap, timeout=timeout)).ok().body

    async def get_json(self, url: str, cap: int | None = None,
                       timeout: float | None = None) -> Any:
        return (await self.request("GET", url, cap=cap, timeout=timeout)).ok().json()

    async def post_bytes(self, url: str, data: bytes, cap: int | None = None,
                         timeout: float | None = None) -> bytes:
        return (await self.request("POST", url, data=data, cap=cap, timeout=timeout)).ok().body

    async def post_json(self, url: str, body: Any, cap: int | None = None,
                        timeout: float | None = None) -> Any:
        reply = await self.request("POST", url, json_body=body, cap=cap, timeout=timeout)
        return reply.ok().json()


async def _read_capped(r: aiohttp.ClientResponse, cap: int, url: str) -> bytes:
    """The whole body, or TooLargeError as soon as it passes `cap` (announced or read)."""
    if r.content_length is not None and r.content_length > cap:
        raise TooLargeError(f"{url}: reply of {r.content_length} bytes over {cap} bytes")
    body = bytearray()
    async for chunk in r.content.iter_any():
        body += chunk
        if len(body) > cap:
            raise TooLargeError(f"{url}: reply over {cap} bytes")
    return bytes(body)


def _why(body: bytes) -> str:
    try:
        said = _err(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        said = body[:200].decode(errors="replace")
    return f": {said}" if said else ""


async def fetch_k3s_token(addrs: list[str], ctx: ssl.SSLContext) -> str:
    """The K3s token from the first sclerotium in `addrs` that gives it, or ""."""
    async with PeerClient(ctx) as peers:
        for addr in addrs:
            try:
                body = await peers.get_json(f"https://{addr}/api/v1/k3s-token")
            except (PeerError, DataError):
                continue
            token = body.get("token") if isinstance(body, dict) else None
            if isinstance(token, str) and len(token) == 64:
                return token
    return ""


class Hypha:
    def __init__(self, addresses: list[str], ssl_ctx: ssl.SSLContext,
                 timeout: float = 10.0) -> None:
        if not addresses:
            raise DataError("no node addresses given; pass --to HOST:PORT[,HOST:PORT...]")
        self.addresses = list(addresses)
        self.peers = PeerClient(ssl_ctx, timeout=timeout, connect_timeout=min(5.0, timeout))

    async def __aenter__(self) -> Hypha:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.peers.close()

    async def call(self, method: str, path: str, data: bytes | None = None,
                   addr: str | None = None) -> tuple[str, int, Any]:
        """(address that answered, HTTP status, JSON body) from the first node that answers."""
        order = [addr] if addr else list(self.addresses)
        errors = []
        for a in order:
            try:
                r = await self.peers.request(method, f"https://{a}{path}", data=data,
                                             headers={"Content-Type": "application/json"})
                return a, r.status, r.json() if r.body else None
            except TooLargeError as e:
                raise PeerError(f"{a}: reply over {MAX_REPLY_BYTES} bytes") from e
            except (PeerError, DataError) as e:
                errors.append(f"{a}: {reason(e.__cause__ or e)}")
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
