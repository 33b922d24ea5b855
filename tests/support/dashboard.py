"""A live network for the dashboard tests: three real agents on loopback holding a state
with one two-replica service, and the channels the TUI reads them through."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.authoring.reach import operator_hypha
from agent.desired.edit import add_endomycete
from agent.desired.model import DesiredState
from agent.desired.schema import parse_state
from agent.errors import PeerError
from agent.lab.cluster import Cluster
from support.agents import GOSSIP, post_envelope, versions, wait_for
from tui.fetch import HyphaChannel, LocalChannel, Poller
from tui.model import Raw

TIMEOUT = 3.0  # what `mycelium tui` gives a node before failing over


def start_dashboard_network(start_cluster: Callable[..., Cluster]) -> tuple[Cluster, int]:
    """(cluster, state version) once all three hold a state running `web` x2 and naming
    a seed location (`published`), the leader has committed a placement for it, and all
    three are Raft members."""
    c = start_cluster(3, extra_args=GOSSIP)
    net = NetworkDir(c.network)
    data = add_endomycete(net.network_yaml.read_bytes(), "web", "localhost/web:1", 2)
    published(c).parent.mkdir()
    data = data.replace(b"locations: []", f"locations: [{published(c)}]".encode())
    version, env = sign_state(net, data)
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    wait_for(lambda: set(versions(c).values()) == {version}, what="all nodes at the state")
    # the placement committed and all three sclerotia Raft members (the backbone screen's
    # seats; once, under load, the third joined after the placement)
    wait_for(lambda: (p := poll(operator_channel(c)).primary or {}).get("placement_version")
             and len(p.get("raft_members") or ()) == 3,
             what="a committed placement and three Raft members")
    return c, version


def published(c: Cluster) -> Path:
    """Where the state of start_dashboard_network has the leader publish the seed spore."""
    return Path(c.dir) / "published" / "spore.json"


def operator_channel(c: Cluster, addrs: list[str] | None = None) -> HyphaChannel:
    net = NetworkDir(c.network)
    return HyphaChannel(operator_hypha(net, addrs or c.addresses(), TIMEOUT), net.root())


def local_channel(c: Cluster, name: str) -> LocalChannel:
    return LocalChannel(Path(next(n for n in c.nodes if n.name == name).data_dir))


def poll(channel: Any) -> Raw:
    """One poll through a fresh channel (closed after), from synchronous test code."""
    async def go() -> Raw:
        try:
            return await Poller(channel).poll()
        finally:
            await channel.close()

    return asyncio.run(go())


# --- a recorded network, for screens that must not change between runs -----------------

RECORDED = Path(__file__).resolve().parent.parent / "data" / "dashboard" / "network.json"


class RecordedChannel:
    """The API answers of a 3-node network recorded once (tests/data/dashboard), with
    10.0.0.N addresses: a fake for snapshot tests only, where live ports, keys and times
    would change every frame. Its envelope is not verified (the YAML is recorded beside
    it)."""

    label = "operator"

    def __init__(self, first: str = "10.0.0.1:7946") -> None:
        self.data = json.loads(RECORDED.read_text())
        self.addresses = [first]

    @property
    def started(self) -> float:
        return float(self.data[f"{self.addresses[0]}/api/v1/node"]["started"])

    async def first(self, path: str) -> tuple[str, Any]:
        return self.addresses[0], await self.at(self.addresses[0], path)

    async def at(self, addr: str, path: str) -> Any:
        if path.endswith("/envelope"):
            return {"recorded": True}
        try:
            return self.data[f"{addr}{path}"]
        except KeyError:
            raise PeerError(f"{addr} answered 404 for {path}") from None

    def verify(self, envelope: Any) -> tuple[bytes, DesiredState] | None:
        text = self.data["network.yaml"].encode()
        return text, parse_state(text, "recorded network.yaml")

    async def close(self) -> None:
        pass


def screen_text(app: Any) -> str:
    """The text on the app's screen now, line by line, as a terminal would show it (the
    compositor's strips; no colours)."""
    strips = app.screen._compositor.render_strips()  # Textual 8: no public text export
    return "\n".join("".join(seg.text for seg in strip).rstrip() for strip in strips)


async def until(pilot: Any, pred: Callable[[], Any], timeout: float = 20.0,
                what: str = "condition") -> Any:
    """Let the app run until `pred()` is truthy (checked every 0.1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        got = pred()
        if got:
            return got
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{screen_text(pilot.app)}")


async def shown(pilot: Any, text: str, timeout: float = 20.0) -> str:
    """The screen's text once `text` is on it."""
    def on_screen() -> str:
        now = screen_text(pilot.app)
        return now if text in now else ""

    return await until(pilot, on_screen, timeout, f"{text!r} on screen")
