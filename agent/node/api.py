"""The node's local HTTP API (aiohttp, mutual TLS): what the CLI, the TUI and peers read.

Every route is behind the TLS layer (a client certificate from this network's CA is
required to connect at all) and the revocation check. Bodies are read whole and capped
by agent/serve.py; handlers never let a bad request reach the node's state.

The handlers see their node only through `NodeHost`, the few things they read and ask of
it (memberlist's Delegate): the daemon implements it, and a small fake drives the routes
in a test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from agent.errors import DataError, MyceliumError, StorageError, TrustError
from agent.gossip.member import MemberView
from agent.node.datadir import NodeIdentity
from agent.node.events import EventLog
from agent.node.vm.checkpoint import FrameError
from agent.node.vm.console import SERIAL_TAIL_MAX, console, log_tail
from agent.node.vm.spec import VmPaths
from agent.serve import read_body, read_json, refusal
from agent.trust.envelope import Envelope
from agent.trust.names import OPERATOR
from agent.trust.rules import MAX_ENVELOPE_BYTES

API = "/api/v1"
CHECKPOINT_MAX = 1 << 31  # bytes of one VM checkpoint frame (a full one of a large guest)
CHECKPOINT_DEADLINE = 120.0  # s to receive one


class NodeHost(Protocol):
    """What the API needs from the node it serves."""

    @property
    def identity(self) -> NodeIdentity: ...
    @property
    def events(self) -> EventLog: ...
    @property
    def held_version(self) -> int: ...
    @property
    def held_sha256(self) -> str: ...

    def node_info(self) -> dict[str, Any]: ...
    def members(self) -> list[MemberView]: ...
    def envelope(self) -> bytes | None: ...
    async def accept_envelope(self, data: bytes, source: str) -> Envelope: ...
    def convergence(self) -> dict[str, Any]: ...
    def share_info(self) -> dict[str, Any]: ...
    def k3s_token_local(self) -> str | None: ...
    def vm_status(self) -> list[dict[str, Any]]: ...
    def vm_backups(self) -> list[dict[str, Any]]: ...

    async def offer_checkpoint(self, name: str, frame: bytes, by: str) -> int | None:
        """A checkpoint of VM `name` from node `by`: the sequence now held, or None for
        a part of a split frame kept until the rest comes. TrustError unless `by` is the
        VM's primary, LookupError if this node is not its backup, FrameError if the frame
        is refused."""

    async def hand_off_vm(self, name: str, to: str) -> dict[str, Any]:
        """The final checkpoint of a planned move of VM `name` to its backup `to`, taken
        by `to`, the guest left paused here. LookupError if VM `name` is not run and
        replicated here, ValueError if `to` cannot take it, MyceliumError on a failure
        (then the guest runs on)."""

    async def thaw_vm(self, name: str) -> None:
        """The move was not committed: the paused guest runs on here."""

    async def move_vm(self, name: str, to: str, role: str) -> int:
        """Leader: commit the placement with VM `name` moved to node `to` as `role`
        (primary | backup): the new placement version. LookupError when this node may not
        place, ValueError (agent/desired/moves.py MoveError) when the move is refused."""

    def release_file(self, sha256: str) -> Path | None:
        """The release artifact this node holds under that SHA-256, or None."""

    def release_serving(self, delta: int) -> bool:
        """Count a download starting (+1: False when at the limit) or ending (-1)."""

    def rollout_view(self, kind: str = "release") -> dict[str, Any]:
        """The release rollout, or (kind "state") the staged state change."""

    async def rollout_act(self, action: str, kind: str = "release") -> dict[str, Any]:
        """pause | resume | abort, committed to the Primary. LookupError without a replica
        or a rollout; ValueError when the action does not apply now."""

    def vm_paths(self, name: str) -> VmPaths | None:
        """Where VM `name` keeps its serial socket and log, or None if it is not here."""

    def primary_view(self) -> dict[str, Any] | None:
        """The local Raft replica's view, or None where no Raft side runs."""

    async def promote(self, secret: str, by: str) -> None:
        """Node `by` hands over the Raft secret: keep it and start the Raft side (a no-op
        while it runs). TrustError when the secret does not verify."""

    async def demote(self, proof: str, by: str) -> None:
        """Node `by` says stop: stop the Raft side and forget its secret (a no-op while it
        does not run). TrustError unless `by` leads our Raft view and the proof verifies."""


def _rollout_kind(v: Any) -> str:
    """release (the default) or state (a staged state change); anything else is refused."""
    if v in (None, "release", "state"):
        return v or "release"
    raise ValueError(f"unknown rollout kind {v!r}; use release or state")


def routes(agent: NodeHost) -> list[web.RouteDef]:
    async def node(_: web.Request) -> web.Response:
        return web.json_response(agent.node_info())

    async def members(_: web.Request) -> web.Response:
        return web.json_response([m.to_row() for m in agent.members()])

    async def state(_: web.Request) -> web.Response:
        return web.json_response({"version": agent.held_version, "sha256": agent.held_sha256})

    async def get_envelope(_: web.Request) -> web.Response:
        data = agent.envelope()
        if data is None:
            return web.json_response({"error": "no state accepted yet"}, status=404)
        return web.Response(body=data, content_type="application/json")

    async def post_envelope(request: web.Request) -> web.Response:
        data = await read_body(request, MAX_ENVELOPE_BYTES)
        try:
            env = await agent.accept_envelope(data, source="push")
        except DataError as e:
            return refusal(e)
        except StorageError as e:  # nothing was stored; the node says why in one line
            return web.json_response({"error": str(e)}, status=507)
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
        view = agent.primary_view()
        if view is None:
            return web.json_response({"error": "no Raft replica here; ask a sclerotium"},
                                     status=404)
        return web.json_response(view)

    async def promote(request: web.Request) -> web.Response:
        """The leader hands this rhizomorph the Raft secret: it becomes a dynamic sclerotium."""
        try:
            by = _node_peer(request)
            body = await read_json(request)
            secret = body["secret"]
            if not (isinstance(secret, str) and len(secret) == 64 and
                    all(c in "0123456789abcdef" for c in secret)):
                raise ValueError("secret must be 64 hex digits")
            await agent.promote(secret, by)
        except TrustError as e:
            return web.json_response({"error": str(e)}, status=403)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad promote request: {e}"}, status=400)
        return web.json_response({"ok": True})

    async def demote(request: web.Request) -> web.Response:
        if agent.identity.role == "sclerotium":
            return web.json_response({"error": "a dedicated sclerotium is never demoted"},
                                     status=409)
        try:
            by = _node_peer(request)
            proof = (await read_json(request))["proof"]
            if not isinstance(proof, str):
                raise ValueError("proof must be a string")
            await agent.demote(proof, by)
        except TrustError as e:
            return web.json_response({"error": str(e)}, status=403)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad demote request: {e}"}, status=400)
        return web.json_response({"ok": True})

    async def vms(_: web.Request) -> web.Response:
        return web.json_response({"node": agent.identity.name, "vms": agent.vm_status(),
                                  "backups": agent.vm_backups()})

    async def checkpoint(request: web.Request) -> web.Response:
        """A VM checkpoint frame (agent/node/vm/checkpoint.py) from the VM's primary."""
        try:
            by = _node_peer(request)
        except TrustError:
            return web.json_response({"error": "only a node certificate may send a VM "
                                      "checkpoint"}, status=403)
        data = await read_body(request, CHECKPOINT_MAX, CHECKPOINT_DEADLINE)
        try:
            seq = await agent.offer_checkpoint(request.match_info["name"], data, by)
        except TrustError as e:
            return web.json_response({"error": str(e)}, status=403)
        except LookupError as e:
            return web.json_response({"error": str(e)}, status=404)
        except FrameError as e:
            return web.json_response({"error": f"checkpoint refused: {e}"}, status=409)
        except StorageError as e:
            return web.json_response({"error": str(e)}, status=507)
        if seq is None:
            return web.json_response({"part": "kept"}, status=202)
        return web.json_response({"seq": seq})

    async def handoff(request: web.Request) -> web.Response:
        """`mycelium vm migrate`: the primary's final checkpoint, shipped to the target."""
        (to,) = await _operator_fields(request, "migrate a VM", "to")
        try:
            return web.json_response(await agent.hand_off_vm(request.match_info["name"], to))
        except LookupError as e:
            return web.json_response({"error": str(e).strip("'")}, status=404)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=409)
        except (MyceliumError, OSError) as e:  # QMP, the stream, the backup: it runs on
            return web.json_response({"error": f"final checkpoint failed (the VM runs on "
                                      f"where it was): {e}"}, status=502)

    async def thaw(request: web.Request) -> web.Response:
        await _operator_fields(request, "migrate a VM")
        await agent.thaw_vm(request.match_info["name"])
        return web.json_response({"ok": True})

    async def move(request: web.Request) -> web.Response:
        """The leader commits a planned VM move (agent/desired/moves.py)."""
        vm, to, role = await _operator_fields(request, "move a VM", "vm", "to", "as")
        try:
            version = await agent.move_vm(vm, to, role)
        except LookupError as e:
            return web.json_response({"error": str(e).strip("'")}, status=421)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=409)
        except (MyceliumError, TimeoutError) as e:
            return web.json_response({"error": f"not committed: {e or 'timed out'}"},
                                     status=503)
        return web.json_response({"placement_version": version})

    def _vm(request: web.Request) -> VmPaths:
        paths = agent.vm_paths(request.match_info["name"])
        if paths is None:
            error = f"no VM {request.match_info['name']} runs on {agent.identity.name}"
            raise web.HTTPNotFound(text=json.dumps({"error": error}),
                                   content_type="application/json")
        return paths

    async def serial(request: web.Request) -> web.Response:
        """The last `bytes` (default 4096, at most 64 KiB) of the VM's serial log."""
        paths = _vm(request)
        try:
            n = min(max(int(request.query.get("bytes", "4096")), 0), SERIAL_TAIL_MAX)
        except ValueError:
            return web.json_response({"error": "bytes must be an integer"}, status=400)
        text = log_tail(paths.serial_log, n).decode(errors="replace")
        return web.json_response({"node": agent.identity.name,
                                  "name": request.match_info["name"], "text": text})

    async def vm_console(request: web.Request) -> web.StreamResponse:
        return await console(request, _vm(request))

    async def release(request: web.Request) -> web.StreamResponse:
        """A release artifact, to peers and the operator (mutual TLS, as every route);
        the fetcher hashes it, so the bytes need no other trust."""
        path = agent.release_file(request.match_info["sha256"])
        if path is None:
            return web.json_response({"error": f"{agent.identity.name} holds no such "
                                      "release"}, status=404)
        if not agent.release_serving(+1):  # the fetcher tries a peer that has it by now
            return web.json_response({"error": f"{agent.identity.name} is busy serving "
                                      "this release; try another peer"}, status=503)
        try:
            resp = web.FileResponse(path, headers={"Content-Type": "application/x-tar"})
            await resp.prepare(request)  # sends the file
            return resp
        finally:
            agent.release_serving(-1)

    async def rollout(request: web.Request) -> web.Response:
        try:
            kind = _rollout_kind(request.query.get("kind"))
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(agent.rollout_view(kind))

    async def rollout_action(request: web.Request) -> web.Response:
        """The operator pauses, resumes or aborts the rollout; a node's certificate must
        not hold back or stop the network's updates."""
        try:
            _operator_peer(request, "pause, resume or abort a rollout")
        except TrustError as e:
            return web.json_response({"error": str(e)}, status=403)
        try:
            body = await read_json(request)
            action, kind = body.get("action"), _rollout_kind(body.get("kind"))
        except (ValueError, AttributeError) as e:
            return web.json_response({"error": f"bad rollout request: {e}"}, status=400)
        try:
            return web.json_response(await agent.rollout_act(str(action), kind))
        except LookupError as e:
            return web.json_response({"error": str(e).strip("'")}, status=404)
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=409)

    return [
        web.get(f"{API}/release/{{sha256}}", release),
        web.get(f"{API}/rollout", rollout),
        web.post(f"{API}/rollout", rollout_action),
        web.get(f"{API}/vms", vms),
        web.get(f"{API}/vms/{{name}}/serial", serial),
        web.get(f"{API}/vms/{{name}}/console", vm_console),
        web.post(f"{API}/vms/{{name}}/checkpoint", checkpoint),
        web.post(f"{API}/vms/{{name}}/handoff", handoff),
        web.post(f"{API}/vms/{{name}}/thaw", thaw),
        web.post(f"{API}/primary/move", move),
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


# What the node console reads on the local socket (no TLS: the socket's mode admits root
# only): the GET routes, less the K3s token, which only nodes may fetch.
LOCAL_ROUTES = ("/primary", "/node", "/members", "/state", "/envelope", "/status", "/events",
                "/share")


def local_routes(agent: NodeHost) -> list[web.RouteDef]:
    """The read-only subset of `routes` served on the data dir's unix socket."""
    return [r for r in routes(agent)
            if r.method == "GET" and r.path.removeprefix(API) in LOCAL_ROUTES]


def _node_peer(request: web.Request) -> str:
    """The name of the node certificate behind this request (set by the revocation
    middleware after the handshake); a client-only certificate (operator, hypha) cannot
    take part in the backbone."""
    peer = request.get("peer")
    if peer is None or peer.client_only:
        raise TrustError("only a node certificate may change the backbone")
    return peer.node_name


async def _operator_fields(request: web.Request, what: str, *names: str) -> list[str]:
    """The operator's request (else 403) and the string fields `names` of its JSON body
    (each required; else 400), for the routes only the operator may call."""
    def refuse(cls: type[web.HTTPException], error: str) -> web.HTTPException:
        return cls(text=json.dumps({"error": error}), content_type="application/json")

    try:
        _operator_peer(request, what)
    except TrustError as e:
        raise refuse(web.HTTPForbidden, str(e)) from e
    if not names:
        return []
    body = await read_json(request)
    values = [body.get(n) if isinstance(body, dict) else None for n in names]
    if not all(isinstance(v, str) and v for v in values):
        raise refuse(web.HTTPBadRequest, f"bad request: {', '.join(names)} must be "
                     "non-empty strings")
    return values


def _operator_peer(request: web.Request, what: str) -> None:
    """The operator's certificate is behind this request (client-only, named `operator`,
    a name no node may enrol under), else TrustError saying who may `what`."""
    peer = request.get("peer")
    if peer is None or not peer.client_only or peer.node_name != OPERATOR:
        raise TrustError(f"only the operator's certificate may {what}")
