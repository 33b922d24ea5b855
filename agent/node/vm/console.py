"""The serial console of a VM, between QEMU's serial unix socket and an API WebSocket.

QEMU writes everything the guest prints to the serial log (kept across restarts) and to
the socket while a client is attached; the socket takes one client at a time, so one
console session per VM is let in (a second is told the console is in use). A session
starts with the log's last TAIL_BYTES (what happened before you attached), then relays
both ways: binary frames from the client are typed into the guest, the guest's output
goes back as binary frames. It ends when either side closes or the VM stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiohttp import WSMsgType, web

from agent.node.vm.spec import VmPaths

TAIL_BYTES = 4096
SERIAL_TAIL_MAX = 64 * 1024  # what /serial returns at most
INPUT_FRAME_MAX = 4096
_busy: set[Path] = set()


def log_tail(log: Path, n: int) -> bytes:
    """The last `n` bytes of the serial log (b"" before the VM printed anything)."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read()
    except OSError:
        return b""


async def console(request: web.Request, paths: VmPaths) -> web.StreamResponse:
    if paths.serial in _busy:
        return web.json_response({"error": "the console is in use by another session"},
                                 status=409)
    try:
        reader, writer = await asyncio.open_unix_connection(str(paths.serial))
    except OSError as e:
        return web.json_response({"error": f"serial console not reachable ({e.strerror}); "
                                  "is the VM running?"}, status=503)
    _busy.add(paths.serial)
    ws = web.WebSocketResponse(max_msg_size=INPUT_FRAME_MAX)
    try:
        await ws.prepare(request)
        await ws.send_bytes(log_tail(paths.serial_log, TAIL_BYTES))

        async def guest_to_client() -> None:
            while data := await reader.read(4096):
                await ws.send_bytes(data)
            await ws.close()  # QEMU went away: end the session (ends the loop below)

        out = asyncio.create_task(guest_to_client())
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                    writer.write(data)
                    await writer.drain()
                if out.done():
                    break
        finally:
            out.cancel()
            await asyncio.gather(out, return_exceptions=True)
    finally:
        _busy.discard(paths.serial)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await ws.close()
    return ws
