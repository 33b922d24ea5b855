"""Signing and pushing network.yaml, then waiting for the live nodes to hold it.

The one push action behind `mycelium push` and `mycelium deploy --push`: a helper both
command handlers call, so no handler calls another. The steps are agent/authoring/push.py
(the dashboard uses them too); progress goes to stderr (a bar redrawn in place), the
outcome to stdout; what is drawn comes from agent/views.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.authoring.netdir import NetworkDir, find_network
from agent.authoring.push import follow, send_envelope
from agent.authoring.reach import member_notes, node_addresses, operator_hypha
from agent.desired.model import DesiredState


def push_state(network: str | None, file: str | Path | None, to: str | None,
               timeout: float) -> int:
    """Validate `file` (default: the network's network.yaml), sign it with the next version,
    push it to one of the nodes and wait up to `timeout` seconds for all live nodes."""
    from agent.authoring.identity import sign_state
    from agent.desired.schema import parse_state

    net = find_network(network)
    src = Path(file) if file else net.network_yaml
    data = src.read_bytes()
    state = parse_state(data, str(src))
    addrs = node_addresses(to, net)
    version, env = sign_state(net, data)
    return asyncio.run(_push(net, addrs, version, env, timeout, state))


async def _push(net: NetworkDir, addrs: list[str], version: int, env: bytes, timeout: float,
                state: DesiredState) -> int:
    async with operator_hypha(net, addrs) as h:
        addr = await send_envelope(h, version, env)
        print(f"pushed version {version} to {addr}", file=sys.stderr)
        async for conv, members in follow(h, version, timeout):
            sys.stderr.write("\r" + conv.bar())
            sys.stderr.flush()
            if conv.done:
                print(file=sys.stderr)
                print(f"all {len(conv.live)} live nodes hold version {version}")
                for line in member_notes(state, members):  # what could not be placed
                    print(line)
                return 0
        return 1  # follow ends only once done
