"""The node's local HTTP API (aiohttp, mutual TLS): what the CLI, the TUI and peers read.

Every route is behind the TLS layer (a client certificate from this network's CA is
required to connect at all) and the revocation check. Bodies are capped by aiohttp's
client_max_size; handlers never let a bad request reach the node's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from agent.errors import DataError, RollbackError, TooLargeError, TrustError
from agent.trust import MAX_ENVELOPE_BYTES

if TYPE_CHECKING:
    from agent.daemon import Agent

API = "/api/v1"


def routes(agent: Agent) -> list[web.RouteDef]:
    async def node(_: web.Request) -> web.Response:
        return web.json_response(agent.node_info())

    async def members(_: web.Request) -> web.Response:
        return web.json_response(agent.members())

    async def state(_: web.Request) -> web.Response:
        return web.json_response({"version": agent.held_version, "sha256": agent.held_sha256})

    async def get_envelope(_: web.Request) -> web.Response:
        data = agent.node.store.envelope()
        if data is None:
            return web.json_response({"error": "no state accepted yet"}, status=404)
        return web.Response(body=data, content_type="application/json")

    async def post_envelope(request: web.Request) -> web.Response:
        data = await request.content.read(MAX_ENVELOPE_BYTES + 1)
        try:
            if len(data) > MAX_ENVELOPE_BYTES:
                raise TooLargeError(f"envelope over {MAX_ENVELOPE_BYTES} bytes")
            env = await agent.accept_envelope(data, source="push")
        except RollbackError as e:
            return web.json_response({"error": str(e)}, status=409)
        except TrustError as e:
            return web.json_response({"error": str(e)}, status=403)
        except DataError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"version": env.version, "node": agent.identity.name})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(agent.convergence())

    async def events(request: web.Request) -> web.Response:
        n = min(int(request.query.get("n", "50") or 50), 200)
        return web.json_response(agent.events.recent(n))

    async def share(_: web.Request) -> web.Response:
        return web.json_response(agent.share_info())

    async def k3s_token(_: web.Request) -> web.Response:
        token = agent.k3s_token_local()
        if token is None:
            return web.json_response({"error": "not a sclerotium; ask one"}, status=404)
        return web.json_response({"token": token})

    return [
        web.get(f"{API}/node", node),
        web.get(f"{API}/members", members),
        web.get(f"{API}/state", state),
        web.get(f"{API}/envelope", get_envelope),
        web.post(f"{API}/envelope", post_envelope),
        web.get(f"{API}/status", status),
        web.get(f"{API}/events", events),
        web.get(f"{API}/share", share),
        web.get(f"{API}/k3s-token", k3s_token),
    ]
