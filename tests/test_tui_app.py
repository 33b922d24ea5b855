"""The dashboard app driven by its keys (Textual's Pilot) against three real agents, one
of them SIGKILLed mid-view; and snapshots at 80x24 and 120x40 of a recorded network."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import Cluster, kill_node
from agent.trust.signed import now_utc
from agent.trust.tokens import verify_token
from support.agents import versions
from support.dashboard import (
    RecordedChannel,
    local_channel,
    operator_channel,
    screen_text,
    shown,
    start_dashboard_network,
    until,
)
from tui.actions import OperatorActions
from tui.app import DashboardApp

SIZE = (80, 24)
T = TypeVar("T")


@pytest.fixture(scope="module")
def net(start_cluster) -> tuple[Cluster, int]:
    return start_dashboard_network(start_cluster)


def drive(app: DashboardApp, scenario: Callable[[Any], Awaitable[T]]) -> T:
    """Run `scenario(pilot)` on the app at 80x24 until it returns."""
    async def go() -> T:
        async with app.run_test(size=SIZE) as pilot:
            return await scenario(pilot)

    return asyncio.run(go())


def operator_app(c: Cluster) -> DashboardApp:
    return DashboardApp(lambda: operator_channel(c),
                        OperatorActions(NetworkDir(c.network), c.addresses()),
                        poll_interval=0.3)


def test_keys_walk_every_view_of_a_live_network(net):
    c, version = net
    app = operator_app(c)

    async def scenario(pilot):
        await shown(pilot, "converged: yes")
        text = screen_text(app)
        assert f"node n1 sclerotium @ {c.nodes[0].addr}" in text
        assert f"state v{version}" in text and "authority: Primary" in text
        assert "reading n1 at" in text
        for name in ("n1", "n2", "n3"):
            assert f"\n {name}  " in text  # a members row each
        await pilot.press("b")
        await shown(pilot, "quorum: yes")
        assert "Raft members (3, target 3)" in screen_text(app)
        await pilot.press("s")
        await shown(pilot, " web ")
        assert "endomycete  2" in screen_text(app)
        await pilot.press("e")
        await shown(pilot, f"accepted state v{version}")
        # filter the members to one, open its detail screen, come back
        await pilot.press("m", "slash", "n", "2", "enter")
        await until(pilot, lambda: "\n n1  " not in screen_text(app), what="filter")
        assert "\n n2  " in screen_text(app)
        await pilot.press("enter")
        await shown(pilot, "n2 (sclerotium) listening on")
        assert "Share:" in screen_text(app) and "Last reconcile:" in screen_text(app)
        await pilot.press("escape", "o")
        assert app.sort_key == "role"
        # the network.yaml the network holds
        await pilot.press("y")
        await shown(pilot, "name: local")
        assert f"network.yaml v{version}" in screen_text(app)
        await pilot.press("escape", "t", "enter")
        token = await until(pilot, lambda: getattr(app.screen, "token", ""),
                            what="a token")
        assert token.startswith("myc1.") and "\u2584" in screen_text(app)
        return token

    token = drive(app, scenario)
    tok = verify_token(token, NetworkDir(c.network).root(), now_utc())
    assert tok.role == "rhizomorph" and tok.expires - now_utc() <= timedelta(hours=24)


def test_push_from_the_dashboard_reaches_every_node(net):
    c, version = net
    app = operator_app(c)

    async def scenario(pilot):
        await shown(pilot, "converged: yes")
        await pilot.press("p")
        await shown(pilot, "Esc goes back")
        await pilot.press("enter")
        text = await shown(pilot, "\ndone")
        assert f"all 3 live nodes hold version {version + 1}" in text, text
        assert f"3/3 nodes at v{version + 1}" in text
        await pilot.press("escape")
        return await shown(pilot, f"state v{version + 1}  converged: yes")

    drive(app, scenario)
    assert set(versions(c).values()) == {version + 1}


def test_console_says_so_when_its_node_is_killed(net):
    """The node console reads its own node only: SIGKILL it, and the screen says the node
    is not answering (and keeps trying), instead of crashing."""
    c, _ = net
    app = DashboardApp(lambda: local_channel(c, "n3"), poll_interval=0.3)

    async def scenario(pilot):
        await shown(pilot, "reading n3")
        assert "local console" in screen_text(app)
        assert " t Token" not in screen_text(app)  # no operator actions on a console
        kill_node(c.nodes[2])
        await shown(pilot, "NOT ANSWERING: n3")
        assert app.is_running

    drive(app, scenario)


def test_operator_fails_over_when_the_node_read_is_killed(net):
    c, _ = net
    app = operator_app(c)

    async def scenario(pilot):
        await shown(pilot, "reading n1")
        kill_node(c.nodes[0])
        text = await shown(pilot, "failed over")
        assert "reading n2 at" in text
        assert "failed over from n1 at" in text
        assert "node n2 sclerotium" in text  # the header is n2's now
        await pilot.press("e")
        await shown(pilot, "-- events of n2 --")

    drive(app, scenario)


# --- snapshots of a recorded network ------------------------------------------------------

def recorded_app() -> DashboardApp:
    ch = RecordedChannel()
    return DashboardApp(lambda: ch, clock=lambda: ch.started + 3725.0, poll_interval=3600)


async def loaded(pilot) -> None:
    await until(pilot, lambda: pilot.app.dash is not None, what="first poll")
    # Under load the tables may be painted a frame after the poll landed (a snapshot once
    # caught them half drawn): wait until two looks 0.1 s apart agree.
    seen = [""]

    def settled() -> bool:
        now = screen_text(pilot.app)
        same, seen[0] = now == seen[0] and bool(now.strip()), now
        return same

    await until(pilot, settled, what="a settled screen")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_members(snap_compare, size):
    assert snap_compare(recorded_app(), terminal_size=size, run_before=loaded)


def test_snapshot_backbone_80x24(snap_compare):
    assert snap_compare(recorded_app(), terminal_size=(80, 24), press=["b"],
                        run_before=loaded)


def test_snapshot_node_detail_80x24(snap_compare):
    assert snap_compare(recorded_app(), terminal_size=(80, 24), press=["down", "enter"],
                        run_before=loaded)
