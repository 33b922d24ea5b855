"""The node's local HTTP API (aiohttp, mutual TLS): what the CLI, the TUI and peers read.

Every route is behind the TLS layer (a client certificate from this network's CA is
required to connect at all) and the revocation check. Bodies are capped by aiohttp's
client_max_size; handlers never let a bad request reach the node's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from agent.errors import DataError, RollbackError, TooLargeError, TrustError
from agent.statefile import atomic_write
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

    async def primary(_: web.Request) -> web.Response:
        bb = agent.backbone
        if bb is None or bb.primary is None:
            return web.json_response({"error": "no Raft replica here; ask a sclerotium"},
                                     status=404)
        return web.json_response({**bb.primary.read(), "quorum": bb.primary.has_quorum()})

    async def promote(request: web.Request) -> web.Response:
        """The leader hands this rhizomorph the Raft secret: it becomes a dynamic sclerotium."""
        refused = _refuse_unless_sclerotium(agent, request)
        if refused:
            return refused
        try:
            body = await request.json()
            secret = body["secret"]
            if not (isinstance(secret, str) and len(secret) == 64 and
                    all(c in "0123456789abcdef" for c in secret)):
                raise ValueError("secret must be 64 hex digits")
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad promote request: {e}"}, status=400)
        if agent.backbone is None:
            agent.node.sclerotium_dir.mkdir(mode=0o700, exist_ok=True)
            atomic_write(agent.node.raft_secret, secret.encode(), 0o600)
            await agent.start_backbone()
            agent.events.add("raft", "promoted to dynamic sclerotium")
        return web.json_response({"ok": True})

    async def demote(request: web.Request) -> web.Response:
        refused = _refuse_unless_sclerotium(agent, request)
        if refused:
            return refused
        if agent.identity.role == "sclerotium":
            return web.json_response({"error": "a dedicated sclerotium is never demoted"},
                                     status=409)
        if agent.backbone is not None:
            await agent.stop_backbone(purge=True)
            agent.events.add("raft", "demoted: Raft side stopped, secret removed")
        return web.json_response({"ok": True})

    return [
        web.get(f"{API}/primary", primary),
        web.post(f"{API}/primary/promote", promote),
        web.post(f"{API}/primary/demote", demote),
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


def _refuse_unless_sclerotium(agent: Agent, request: web.Request) -> web.Response | None:
    """Promotion and demotion come from the Raft leader: a dedicated sclerotium by its
    certificate, or a dynamic one that gossip shows leading the Raft cluster."""
    from agent.pki import cert_info

    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj else None
    if der is None:
        return web.json_response({"error": "no client certificate"}, status=403)
    info = cert_info(der)
    if info.role == "sclerotium" or any(
            m["name"] == info.node_name and (m.get("raft") or {}).get("leader")
            for m in agent.members()):
        return None
    return web.json_response({"error": f"{info.node_name} is not a sclerotium"}, status=403)
