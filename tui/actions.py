"""What only the operator's dashboard may do, holding the network directory (root keys):
make a join token, and sign and push the network's network.yaml with its progress.

The steps are the CLI's own (agent/authoring: identity.make_token, identity.sign_state,
push.send_envelope and push.follow); here they yield one line of progress at a time for a
screen to show. Signing runs in a thread (it writes the version counter), never on the
event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from agent.authoring.netdir import NetworkDir

PUSH_TIMEOUT = 60.0  # seconds to wait for every live node, as `mycelium push`
NODE_TIMEOUT = 3.0  # seconds a node has to answer before the next address is tried


@dataclass
class OperatorActions:
    net: NetworkDir
    addrs: list[str]

    def make_token(self, role: str, ttl: timedelta) -> str:
        from agent.authoring.identity import make_token

        return make_token(self.net, role, ttl)

    async def push(self, timeout: float = PUSH_TIMEOUT) -> AsyncIterator[str]:
        """Validate, sign with the next version, push, follow: progress lines, the bar
        ones starting with `[`. Raises MyceliumError (SchemaError with every problem)."""
        from agent.authoring.identity import sign_state
        from agent.authoring.push import follow, send_envelope
        from agent.authoring.reach import member_notes, operator_hypha
        from agent.desired.schema import parse_state

        path = self.net.network_yaml
        data = path.read_bytes()
        state = await asyncio.to_thread(parse_state, data, str(path))
        version, env = await asyncio.to_thread(sign_state, self.net, data)
        yield f"signed {path} as version {version}"
        async with operator_hypha(self.net, self.addrs, NODE_TIMEOUT) as h:
            addr = await send_envelope(h, version, env)
            yield f"pushed version {version} to {addr}"
            async for conv, members in follow(h, version, timeout):
                yield conv.bar()
                if conv.done:
                    yield f"all {len(conv.live)} live nodes hold version {version}"
                    for line in member_notes(state, members):  # what could not be placed
                        yield line
