"""Pushing a signed state and following it until the live nodes hold it: the steps behind
`mycelium push` and the dashboard's push, each showing the progress its own way.

`send_envelope` hands the envelope to the first node that answers; `follow` yields the
convergence after each members poll until every live member holds the version, and raises
PeerError naming the laggards (and what they say is wrong) once `timeout` passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from agent.client import Hypha
from agent.errors import DataError, MyceliumError, PeerError, StorageError
from agent.views import Convergence, member_rows

POLL_S = 0.3  # between members polls while waiting for convergence


async def send_envelope(h: Hypha, version: int, env: bytes) -> str:
    """The address of the node that took `env`; DataError or StorageError saying why not."""
    addr, status, body = await h.call("POST", "/api/v1/envelope", env)
    why = body.get("error", status) if isinstance(body, dict) else status
    if status == 507:  # the node's disk: its message names the node and the cause
        raise StorageError(f"{addr}: {why}")
    if status != 200:
        raise DataError(f"{addr} refused version {version}: {why}")
    return addr


async def follow(h: Hypha, version: int, timeout: float, poll: float = POLL_S
                 ) -> AsyncIterator[tuple[Convergence, list]]:
    """(convergence, raw members) after each poll, the last one done."""
    deadline = time.monotonic() + timeout
    while True:
        members = await h.get("/api/v1/members")
        conv = Convergence.of(member_rows(members), version)
        yield conv, members
        if conv.done:
            return
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout:.0f}s; not yet at v{version}: "
                            f"{conv.lag()}" + await _problems(h, conv))
        await asyncio.sleep(poll)


async def _problems(h: Hypha, conv: Convergence) -> str:
    """What the lagging nodes say is wrong with them (a full disk, say), as `; ...`."""
    said = []
    for m in conv.lagging:
        try:
            problem = (await h.get("/api/v1/node", m.addr)).get("problem")
        except (MyceliumError, AttributeError):
            continue
        if problem:
            said.append(str(problem))
    return "".join(f"; {p}" for p in said)
