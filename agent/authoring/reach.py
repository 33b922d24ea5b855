"""How the operator reaches the nodes: which addresses, a client with the operator's
certificate, and the status snapshot `mycelium status` (and the TUI) show.

Addresses come from, in order: an explicit list (`--to`), `$MYCELIUM_NODES`, the seed
spore's bootstrap addresses in the network directory. None of those is an error the
operator can act on (pass --to or set the variable), not a silent default.
"""

from __future__ import annotations

import os
from typing import Any

from agent.authoring.netdir import NetworkDir
from agent.client import Hypha
from agent.desired.model import DesiredState
from agent.desired.placement import live_members, place, placement_notes, seen_members
from agent.errors import ConfigError, MyceliumError
from agent.tls import client_context
from agent.trust.root import Root

NODES_ENV = "MYCELIUM_NODES"


def node_addresses(to: str | None, net: NetworkDir | None) -> list[str]:
    """HOST:PORT of the nodes to talk to (see the module docstring for the order)."""
    raw = to or os.environ.get(NODES_ENV, "")
    if raw:
        return [a.strip() for a in raw.split(",") if a.strip()]
    if net is not None and net.spore_json.exists():
        from agent.trust.spore import load_spore

        boot = load_spore(net.spore_json.read_bytes()).bootstrap
        if boot:
            return list(boot)
    raise ConfigError(f"no node address: pass --to HOST:PORT or set {NODES_ENV}")


def operator_hypha(net: NetworkDir, addrs: list[str], timeout: float = 10.0) -> Hypha:
    """A client to `addrs` (failing over in order) that presents the operator certificate."""
    return Hypha(addrs, client_context(net.operator_crt, net.operator_key, net.ca_crt),
                 timeout)


async def fetch_status(net: NetworkDir, addrs: list[str], shares: bool
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Members as the first reachable node lists them; if `shares`, each alive member's
    share or `{"node", "error"}` when asking it failed (raw API JSON, for `-o json`); and
    what the state that node holds asks that cannot be placed on those members."""
    async with operator_hypha(net, addrs) as h:
        members = await h.get("/api/v1/members")
        notes = await held_notes(h, net.root(), members)
        out = []
        if shares:
            for m in members:
                if m.get("state") == "alive":
                    try:
                        out.append(await h.get("/api/v1/share", m["addr"]))
                    except MyceliumError as e:
                        out.append({"node": m["name"], "error": str(e)})
        return members, out, notes


async def fetch_vms(net: NetworkDir, addrs: list[str]) -> list[dict[str, Any]]:
    """Each alive member's /api/v1/vms (`{"node", "addr", "vms"}`), or `{"node", "addr",
    "error"}` when asking it failed."""
    async with operator_hypha(net, addrs) as h:
        out = []
        for m in await h.get("/api/v1/members"):
            if m.get("state") != "alive":
                continue
            try:
                out.append({**await h.get("/api/v1/vms", m["addr"]), "addr": m["addr"]})
            except MyceliumError as e:
                out.append({"node": m["name"], "addr": m["addr"], "error": str(e)})
        return out


def member_notes(state: DesiredState, members: list[dict[str, Any]]) -> list[str]:
    """What `state` asks that cannot be placed on the members /api/v1/members shows alive
    (the operator's assumed placement: the leader places the same counts)."""
    live = live_members(state, seen_members(members))
    return placement_notes(state, live, place(state, live))


def verified_state(envelope: Any, root: Root) -> tuple[bytes, DesiredState] | None:
    """(network.yaml bytes, parsed state) of an envelope as /api/v1/envelope returns it,
    verified against the network's root before its YAML is parsed; None when it does not
    verify or parse (a display shows what it can: a node still holds what it holds)."""
    from agent.desired.schema import parse_state
    from agent.trust.encoding import dump_json
    from agent.trust.rules import verify_envelope
    from agent.trust.signed import now_utc

    try:
        env = verify_envelope(dump_json(envelope), root, 0, now_utc())
        return env.payload, parse_state(env.payload, f"state v{env.version}")
    except MyceliumError:
        return None


async def held_notes(h: Hypha, root: Root, members: list[dict[str, Any]]) -> list[str]:
    """member_notes for the state the node answering `h` holds ([] while it holds none)."""
    try:
        held = verified_state(await h.get("/api/v1/envelope"), root)
    except MyceliumError:
        return []
    return member_notes(held[1], members) if held is not None else []
