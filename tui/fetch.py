"""The dashboard's I/O: one poll of a node's API into a `tui.model.Raw`.

A `Channel` is how the dashboard reaches the API:
- `HyphaChannel` (the operator's `mycelium tui`): agent/client.py's `Hypha` with the
  operator certificate. A poll starts with /api/v1/node on the first address that answers
  (Hypha fails over and moves a failed address to the end), then reads every other route
  from that same node, so one screen never mixes two nodes' views.
- `LocalChannel` (a node's console, `mycelium tui --local`): the agent's read-only unix
  socket in its data dir; it reaches its own node only.

Everything that fails comes out as agent.errors.PeerError or DataError; the app shows it
and polls again. The envelope is verified against the network's root before its YAML is
parsed (agent/authoring/reach.py), off the event loop, and only when its hash changes.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Protocol

from agent.authoring.reach import verified_state
from agent.client import Hypha, PeerClient
from agent.desired.model import DesiredState
from agent.errors import MyceliumError, PeerError
from agent.trust.root import Root
from tui.model import Raw

API = "/api/v1"
EVENTS = 100  # events asked of a node per poll
NOT_FOUND = re.compile(r"answered (HTTP )?404\b")  # agent/client.py's words for a 404


class Channel(Protocol):
    """A way to the API. `first` asks whichever node answers first (and says which);
    `at` asks one node only."""

    @property
    def label(self) -> str:
        """What the dashboard says it reads through: "operator" or "local console"."""

    def verify(self, envelope: Any) -> tuple[bytes, DesiredState] | None:
        """(network.yaml, state) of a held envelope once it verifies, else None."""

    async def first(self, path: str) -> tuple[str, Any]: ...
    async def at(self, addr: str, path: str) -> Any: ...
    async def close(self) -> None: ...


class HyphaChannel:
    label = "operator"

    def __init__(self, hypha: Hypha, root: Root | None) -> None:
        self.hypha, self.root = hypha, root

    @property
    def addresses(self) -> list[str]:
        return self.hypha.addresses

    async def first(self, path: str) -> tuple[str, Any]:
        addr, status, body = await self.hypha.call("GET", path)
        if status != 200:
            raise PeerError(f"{addr} answered {status} for {path}")
        return addr, body

    async def at(self, addr: str, path: str) -> Any:
        return await self.hypha.get(path, addr)

    def verify(self, envelope: Any) -> tuple[bytes, DesiredState] | None:
        return verified_state(envelope, self.root) if self.root is not None else None

    async def close(self) -> None:
        await self.hypha.peers.close()


class LocalChannel:
    """The node's own read-only API on its unix socket (no TLS, no key: the socket file's
    mode lets only root in). The node's root is read from its data dir when first needed,
    so a console started before the node has enrolled waits for it instead of failing."""

    label = "local console"

    def __init__(self, data_dir: Path, timeout: float = 3.0) -> None:
        from agent.node.datadir import NodeDir

        self.node = NodeDir(data_dir)
        self.socket_path = self.node.api_socket
        self.client = PeerClient(None, timeout=timeout, unix_socket=str(self.socket_path))
        self.root: Root | None = None

    @property
    def addresses(self) -> list[str]:
        return [str(self.socket_path)]

    async def first(self, path: str) -> tuple[str, Any]:
        body = await self.client.get_json(f"http://localhost{path}")
        addr = body.get("listen", "local") if isinstance(body, dict) else "local"
        return str(addr), body

    async def at(self, addr: str, path: str) -> Any:
        return await self.client.get_json(f"http://localhost{path}")

    def verify(self, envelope: Any) -> tuple[bytes, DesiredState] | None:
        if self.root is None:
            try:
                self.root = self.node.root()
            except MyceliumError:
                return None
        return verified_state(envelope, self.root)

    async def close(self) -> None:
        await self.client.close()


class Poller:
    """Polls through a channel; keeps the last verified state so an unchanged envelope is
    neither fetched nor parsed again."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._held: tuple[str, tuple[bytes, DesiredState] | None] = ("", None)

    @property
    def network_yaml(self) -> bytes | None:
        """The network.yaml the node read last holds (verified), None when unknown."""
        return self._held[1][0] if self._held[1] is not None else None

    async def poll(self) -> Raw:
        ch = self.channel
        addr, node = await ch.first(f"{API}/node")
        if not isinstance(node, dict):
            raise PeerError(f"{addr}: /node is not an object")
        members = await ch.at(addr, f"{API}/members")
        share = await self._optional(addr, f"{API}/share")
        events = await self._optional(addr, f"{API}/events?n={EVENTS}")
        primary, primary_from = await self._primary(addr, node, members)
        raw = Raw(addr, node, members if isinstance(members, list) else [],
                  share if isinstance(share, dict) else None, primary, primary_from,
                  events if isinstance(events, list) else [])
        raw.state = await self._held_state(addr, str(node.get("sha256") or ""))
        return raw

    async def _optional(self, addr: str, path: str) -> Any:
        """A route the screen can do without (an older node may answer 404): None."""
        try:
            return await self.channel.at(addr, path)
        except PeerError as e:
            if NOT_FOUND.search(str(e)):
                return None
            raise

    async def _primary(self, addr: str, node: dict[str, Any], members: Any
                       ) -> tuple[dict[str, Any] | None, str]:
        """The node's own Raft view; a rhizomorph's comes from a live sclerotium (the
        leader first), which only the operator's channel can reach."""
        try:
            return await self.channel.at(addr, f"{API}/primary"), str(node.get("name", ""))
        except PeerError:
            pass
        if not isinstance(members, list) or isinstance(self.channel, LocalChannel):
            return None, ""
        seats = [m for m in members if isinstance(m, dict) and m.get("state") == "alive"
                 and isinstance(m.get("raft"), dict) and m["raft"].get("addr")]
        seats.sort(key=lambda m: not m["raft"].get("leader"))
        for m in seats:
            try:
                return await self.channel.at(str(m.get("addr")), f"{API}/primary"), str(
                    m.get("name"))
            except MyceliumError:
                continue
        return None, ""

    async def _held_state(self, addr: str, sha256: str) -> DesiredState | None:
        if not sha256:
            return None
        if self._held[0] != sha256:
            try:
                env = await self.channel.at(addr, f"{API}/envelope")
            except MyceliumError:
                return None
            self._held = (sha256, await asyncio.to_thread(self.channel.verify, env))
        return self._held[1][1] if self._held[1] is not None else None

    async def detail(self, addr: str, name: str) -> tuple[dict | None, dict | None, list, str]:
        """(its share, its /node, its events, error) as member `name` at `addr` reports
        them; the error says why it could not be asked (then the rest is empty)."""
        try:
            share = await self.channel.at(addr, f"{API}/share")
            node = await self.channel.at(addr, f"{API}/node")
            events = await self.channel.at(addr, f"{API}/events?n=30")
        except MyceliumError as e:
            return None, None, [], str(e)
        if isinstance(node, dict) and node.get("name") != name:
            return None, None, [], f"{addr} is {node.get('name')}, not {name}"
        return (share if isinstance(share, dict) else None,
                node if isinstance(node, dict) else None,
                events if isinstance(events, list) else [], "")
