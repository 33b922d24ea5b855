"""The server side of every listening port: whole bodies, bounded connections, deadlines.

Why one module: an outside attack run (issue 18) found each port failing the same ways.
`request.content.read(n)` returns what has arrived so far, so a body sent in two TCP
writes was refused as "not valid JSON"; and a port accepted any number of connections,
each holding a 256 KiB TLS buffer before its handshake, with no deadline on handshake or
headers (1000 slow clients took an agent to 408 MB). So:

- `read_body` reads a request body to its end, up to a cap: 413 when Content-Length says
  more (before reading a byte) or when the bytes pass the cap; 408 past a deadline. Both
  close the connection. `read_json` adds the parse (400 when malformed).
- `Listener` serves an aiohttp app on one port with a connection limit counted from
  accept (before TLS, so a flood costs no TLS buffers past the limit; a full port drops
  its oldest connection, so a flooder loses its own sockets and a fresh client gets in),
  a TLS handshake deadline, and a header deadline (aiohttp's keep-alive timer, which runs
  from the connection's start and closes it while no complete request has arrived).
- `refusal` maps the DataError families to the status codes the README promises:
  malformed 400, bad signature or trust 403, stale or rollback 409, over a cap 413.

It sits in the shared layer (the gossip handler uses it) and imports only agent.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.errors import DataError, MalformedError, RollbackError, TooLargeError, TrustError
from agent.tuning import (
    BODY_DEADLINE,
    COLLECT_AFTER,
    HANDSHAKE_DEADLINE,
    HEADER_DEADLINE,
    SMALL_BODY_BYTES,
)

# --- tuning (the lead moves these into agent/tuning.py) ---------------------------------


# --- bodies -----------------------------------------------------------------------------

def _closing(exc: web.HTTPException) -> web.HTTPException:
    """An error answer after which the connection closes (the rest of the body is unread)."""
    exc.force_close()
    return exc


def _error(cls: type[web.HTTPException], message: str, **kw: Any) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json", **kw)


async def read_body(request: web.BaseRequest, cap: int,
                    deadline: float = BODY_DEADLINE) -> bytes:
    """The whole body, however many TCP writes it came in; refused past `cap` bytes."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise _closing(_error(web.HTTPRequestEntityTooLarge,
                              f"body of {declared} bytes is over the {cap}-byte cap",
                              max_size=cap, actual_size=declared))
    body = bytearray()
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.read(cap + 1 - len(body)):
                body += chunk
                if len(body) > cap:
                    raise _closing(_error(web.HTTPRequestEntityTooLarge,
                                          f"body is over the {cap}-byte cap",
                                          max_size=cap, actual_size=len(body)))
    except TimeoutError:
        raise _closing(_error(web.HTTPRequestTimeout,
                              f"body not complete after {deadline:.0f} s")) from None
    return bytes(body)


async def read_json(request: web.BaseRequest, cap: int = SMALL_BODY_BYTES) -> Any:
    """`read_body` then JSON; a body that does not parse is answered 400."""
    data = await read_body(request, cap)
    try:
        return json.loads(data)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise _error(web.HTTPBadRequest, f"body is not valid JSON: {e}") from e


def status_for(e: DataError) -> int:
    """The README's status codes, from the most specific error family down."""
    if isinstance(e, TooLargeError):
        return 413
    if isinstance(e, RollbackError):
        return 409
    if isinstance(e, MalformedError):
        return 400
    if isinstance(e, TrustError):
        return 403
    return 400


def refusal(e: DataError) -> web.Response:
    return web.json_response({"error": str(e)}, status=status_for(e))


# --- ports ------------------------------------------------------------------------------

def _trim() -> None:
    """Hand freed heap pages back to the system (glibc's malloc_trim; a no-op elsewhere):
    buffers freed among live objects are not at the heap's top, so glibc keeps them and
    the agent stayed 60 MB above its baseline after a flood of 200 connections."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Port:
    """The live connections of one port, oldest first, counted from accept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live: dict[asyncio.Transport, None] = {}
        self.handshakes: set[asyncio.Task[None]] = set()
        self.evicted = 0
        self._collect: asyncio.TimerHandle | None = None

    def handshake_failed(self) -> None:
        """A refused or timed-out handshake leaves its 256 KiB TLS buffer in a reference
        cycle (the error's traceback holds the protocol) that the garbage collector may not
        visit for a long while on a quiet agent: after a flood, collect once, soon, and
        give the freed pages back."""
        if self._collect is None:
            self._collect = asyncio.get_running_loop().call_later(COLLECT_AFTER,
                                                                  self._collected)

    def _collected(self) -> None:
        gc.collect()
        _trim()
        self._collect = None


    def admit(self, transport: asyncio.Transport) -> None:
        for t in [t for t in self.live if t.is_closing()]:
            del self.live[t]
        while len(self.live) >= self.limit:
            oldest = next(iter(self.live))
            del self.live[oldest]
            oldest.abort()
            self.evicted += 1
        self.live[transport] = None

    def close(self) -> None:
        if self._collect is not None:
            self._collect.cancel()
        for task in self.handshakes:
            task.cancel()
        for t in self.live:
            t.abort()
        self.live.clear()


class _Accept(asyncio.Protocol):
    """The raw side of one accepted socket: counted, then handed to TLS and the app."""

    def __init__(self, port: _Port, app: Callable[[], asyncio.Protocol],
                 ctx: ssl.SSLContext | None, handshake_deadline: float) -> None:
        self.port, self.app, self.ctx, self.deadline = port, app, ctx, handshake_deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.port.admit(transport)
        proto = self.app()
        if self.ctx is None:
            transport.set_protocol(proto)
            proto.connection_made(transport)
            return
        transport.pause_reading()  # the ClientHello waits in the kernel until TLS starts
        task = asyncio.get_running_loop().create_task(self._tls(transport, proto))
        self.port.handshakes.add(task)
        task.add_done_callback(self.port.handshakes.discard)

    async def _tls(self, transport: asyncio.Transport, proto: asyncio.Protocol) -> None:
        assert self.ctx is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, proto, self.ctx, server_side=True,
                ssl_handshake_timeout=self.deadline)
        except (OSError, ssl.SSLError, TimeoutError, RuntimeError):
            transport.abort()  # refused, too slow, or gone: nothing reached the app
            self.port.handshake_failed()
            return
        if tls is None:
            transport.abort()
            self.port.handshake_failed()
            return
        proto.connection_made(tls)


class Listener:
    """An aiohttp app on one port, bounded: an async context manager owning its server."""

    def __init__(self, app: web.Application, host: str, port: int,
                 ctx: ssl.SSLContext | None, max_connections: int, *,
                 handshake_deadline: float = HANDSHAKE_DEADLINE,
                 header_deadline: float = HEADER_DEADLINE, unix_path: str = "",
                 unix_mode: int = 0o600) -> None:
        self.app, self.host, self.port, self.ctx = app, host, port, ctx
        # a unix socket instead of host:port (the node console's local channel); its mode
        # is set before the server accepts, and it sits in the 0700 data dir anyway
        self.unix_path, self.unix_mode = unix_path, unix_mode
        self.conns = _Port(max_connections)
        self.handshake_deadline = handshake_deadline
        # keepalive_timeout: aiohttp closes a connection that has no complete request
        # this long after its start or its last response. lingering_time=0: a body the
        # handler refused is not drained, the connection closes instead.
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                    keepalive_timeout=header_deadline, lingering_time=0,
                                    shutdown_timeout=1.0)
        self.server: asyncio.Server | None = None

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Listener:
        await self.runner.setup()
        app = self.runner.server
        assert app is not None
        def accept() -> _Accept:
            return _Accept(self.conns, app, self.ctx, self.handshake_deadline)

        loop = asyncio.get_running_loop()
        try:
            if self.unix_path:
                self.server = await loop.create_unix_server(accept, self.unix_path,
                                                            backlog=128, start_serving=False)
                os.chmod(self.unix_path, self.unix_mode)
                await self.server.start_serving()
            else:
                self.server = await loop.create_server(accept, self.host, self.port,
                                                       backlog=128)
        except BaseException:
            await self.runner.cleanup()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        try:
            await self.runner.cleanup()
        finally:
            self.conns.close()
            if self.unix_path:  # asyncio leaves the socket file; a stopped node has none
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_path)


async def serve_forever(app: web.Application, host: str, port: int,
                        ctx: ssl.SSLContext | None, max_connections: int) -> None:
    """One bounded port until SIGINT or SIGTERM (`mycelium seed serve`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Listener(app, host, port, ctx, max_connections):
        await stop.wait()
