"""`mycelium vm console`: a VM's serial console through its node's API (mutual TLS).

The node relays a WebSocket to the VM's serial port (agent/node/vm/console.py). Here the
operator's side: bytes typed go to the guest, the guest's output is written to stdout.
Interactive on a terminal (raw mode, Ctrl-] leaves, like `virsh console`); with a time
limit (`--for`) it only watches, which is what scripts and tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import BinaryIO

import aiohttp

from agent.authoring.netdir import NetworkDir
from agent.errors import PeerError
from agent.tls import client_context

ESCAPE = b"\x1d"  # Ctrl-]


async def run_console(net: NetworkDir, addr: str, name: str, out: BinaryIO,
                      watch_for: float | None = None) -> None:
    """Attach to VM `name` on the node at `addr` until Ctrl-] (or `watch_for` seconds)."""
    ctx = client_context(net.operator_crt, net.operator_key, net.ca_crt)
    url = f"https://{addr}/api/v1/vms/{name}/console"
    async with aiohttp.ClientSession() as s:
        try:
            ws = await s.ws_connect(url, ssl=ctx, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except aiohttp.WSServerHandshakeError as e:
            raise PeerError(f"{addr}: console of {name} refused (HTTP {e.status}); "
                            "`mycelium vm status " + name + "` says why") from e
        except (aiohttp.ClientError, OSError) as e:
            raise PeerError(f"{url}: {type(e).__name__}: {e}") from e
        async with ws:
            reader = asyncio.create_task(_guest_to(ws, out))
            if watch_for is not None:
                await asyncio.wait({reader}, timeout=watch_for)
            else:
                await _typing(ws, reader)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _guest_to(ws: aiohttp.ClientWebSocketResponse, out: BinaryIO) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            out.write(msg.data)
            out.flush()


async def _typing(ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task) -> None:
    """Stdin to the guest, raw when it is a terminal, until Ctrl-] or the VM goes away."""
    fd = sys.stdin.fileno()
    loop = asyncio.get_running_loop()
    typed: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(fd, lambda: typed.put_nowait(os.read(fd, 1024)))
    saved = None
    if os.isatty(fd):
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
        sys.stderr.write("connected; Ctrl-] leaves\r\n")
    try:
        while not reader.done():
            get = asyncio.create_task(typed.get())
            await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                break
            data = get.result()
            head = data.split(ESCAPE)[0]
            if head:
                await ws.send_bytes(head)
            if not data or ESCAPE in data:  # end of input, or Ctrl-]
                break
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            import termios

            with contextlib.suppress(OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            sys.stderr.write("\r\n")
