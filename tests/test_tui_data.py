"""The dashboard's data layer without a terminal: API -> tui.model view models, read from
three real agents over the operator's channel and over a node's local socket; then the
pure parts (uptime, sort, filter, QR) with data."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest

from agent.errors import PeerError
from agent.lab.cluster import Cluster
from agent.views import MemberRow
from support.agents import wait_for
from support.dashboard import (
    local_channel,
    operator_channel,
    poll,
    published,
    start_dashboard_network,
)
from tui.fetch import Poller
from tui.model import (
    Raw,
    dashboard,
    filter_members,
    node_detail,
    sort_members,
    uptime_text,
)
from tui.qr import CELLS, qr_lines


@pytest.fixture(scope="module")
def net(start_cluster) -> tuple[Cluster, int]:
    return start_dashboard_network(start_cluster)


def test_operator_view_of_a_live_network(net):
    c, version = net
    d = dashboard(poll(operator_channel(c)), time.time())
    h = d.header
    first = c.nodes[0]
    assert (h.network, h.node, h.role, h.addr) == ("local", "n1", "sclerotium", first.addr)
    assert h.version == version and h.converged == "yes" and h.authority == "Primary"
    assert h.uptime != "-" and h.network_id and not h.problem
    assert sorted(m.name for m in d.members) == ["n1", "n2", "n3"]
    assert all(m.state == "alive" and m.version == version for m in d.members)
    bb = d.backbone
    assert bb.read_from == "n1" and bb.quorum and bb.leader in {"n1", "n2", "n3"}
    assert sorted(s.name for s in bb.seats) == ["n1", "n2", "n3"]
    assert [s.name for s in bb.seats if s.leader] == [bb.leader]
    assert bb.placement_version >= 1 and bb.committed_version == version
    web = next(s for s in d.services if s.name == "web")
    assert (web.kind, web.wanted, len(web.placed)) == ("endomycete", "2", 2)
    assert web.applied == ()  # test agents never apply (no --apply-target)
    kinds = {e.kind for e in d.events}
    assert {"start", "state", "joined"} <= kinds, kinds
    assert any(f"accepted state v{version}" in e.message for e in d.events)
    text = "\n".join(h.lines() + bb.lines())
    assert "converged: yes" in text and "quorum: yes" in text


def test_backbone_says_when_each_seed_location_was_read_and_written(net):
    c, version = net
    spore = f"{c.network}/spore.json"  # each agent's --seed-spore, read at its start
    d = dashboard(poll(operator_channel(c)), time.time())
    text = "\n".join(d.backbone.lines())
    assert f"  {spore}\n    read " in text and "; never written" in text, text
    leader = next(n for n in c.nodes if n.name == d.backbone.leader)

    def leader_says() -> str:
        d = dashboard(poll(operator_channel(c, [leader.addr])), time.time())
        text = "\n".join(d.backbone.lines())
        return text if "; written " in text else ""

    text = wait_for(leader_says, what="the leader to publish the seed spore")
    assert published(c).exists()
    assert f"  {published(c)}\n    never read; written " in text, text
    assert "FAILED" not in text and text.count(" ok v") == 2, text


def test_node_detail_asks_the_node_itself(net):
    c, version = net
    ch = operator_channel(c)

    async def run():
        try:
            p = Poller(ch)
            d = dashboard(await p.poll(), time.time())
            m = next(m for m in d.members if m.name == "n3")
            share, node, events, error = await p.detail(m.addr, m.name)
            assert not error and node["name"] == "n3"
            return node_detail(m, share, d.placement, node, events)
        finally:
            await ch.close()

    text = "\n".join(asyncio.run(run()).lines(time.time()))
    assert "node n3 (sclerotium)" in text and f"holds v{version}" in text
    assert "runtime     podman" in text and "status off" in text
    assert "n3 (sclerotium) listening on" in text  # n3's own events, not n1's


def test_fail_over_to_the_next_address(net):
    c, _ = net
    dead = "127.0.0.1:1"  # nothing listens there: refused at once
    raw = poll(operator_channel(c, [dead, c.nodes[1].addr]))
    assert raw.addr == c.nodes[1].addr and raw.node["name"] == "n2"


def test_local_socket_reads_its_own_node_without_a_key(net):
    c, version = net
    sock = os.path.join(c.nodes[1].data_dir, "api.sock")
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    raw = poll(local_channel(c, "n2"))
    d = dashboard(raw, time.time())
    assert d.header.node == "n2" and d.header.version == version
    assert d.header.addr == c.nodes[1].addr and d.backbone.read_from == "n2"
    assert d.header.network == "local"  # the state verified against the node's own root


def test_local_socket_is_read_only(net):
    c, _ = net
    ch = local_channel(c, "n1")

    async def go():
        try:
            post = await ch.client.request("POST", "http://localhost/api/v1/envelope",
                                           data=b"{}")
            token = await ch.client.request("GET", "http://localhost/api/v1/k3s-token")
            return post.status, token.status
        finally:
            await ch.close()

    assert asyncio.run(go()) == (405, 404)


def test_a_console_before_its_node_runs_gets_a_peer_error(tmp_path):
    """No agent (not enrolled, no socket yet): an error the app shows, then retries."""
    from tui.fetch import LocalChannel

    with pytest.raises(PeerError):
        poll(LocalChannel(tmp_path))


# --- pure parts ---------------------------------------------------------------------------

def _m(name: str, state: str = "alive", version: int = 1, seen: float = 0.0,
       role: str = "rhizomorph") -> MemberRow:
    return MemberRow.from_api({"name": name, "state": state, "version": version, "role": role,
                               "addr": f"10.0.0.{len(name)}:7946", "last_seen": seen})


def test_sort_and_filter_members():
    rows = [_m("b", "dead", 3, 5.0), _m("a", "alive", 1, 9.0), _m("c", "suspect", 2, 1.0,
                                                                  "sclerotium")]
    assert [m.name for m in sort_members(rows, "name")] == ["a", "b", "c"]
    assert [m.name for m in sort_members(rows, "state")] == ["a", "c", "b"]
    assert [m.name for m in sort_members(rows, "version")] == ["b", "c", "a"]
    assert [m.name for m in sort_members(rows, "seen")] == ["a", "b", "c"]
    assert [m.name for m in sort_members(rows, "role")] == ["a", "b", "c"]
    assert [m.name for m in filter_members(rows, "SCLER")] == ["c"]
    assert [m.name for m in filter_members(rows, "dead")] == ["b"]
    assert len(filter_members(rows, "  ")) == 3


@pytest.mark.parametrize("seconds,text", [(None, "-"), (-1, "-"), (12, "12s"),
                                          (249, "4m 09s"), (7500, "2h 05m"),
                                          (3 * 86400 + 4 * 3600, "3d 04h")])
def test_uptime_text(seconds, text):
    assert uptime_text(seconds) == text


def test_a_short_answer_shows_dashes_not_a_traceback():
    d = dashboard(Raw("10.0.0.1:7946", {"name": "x"}, [{"name": "y"}], None, None, "",
                      [{"kind": "odd"}]), 100.0)
    assert d.header.converged == "no live members" and d.header.authority == "-"
    assert d.header.uptime == "-" and d.header.network == "-"
    assert d.backbone.lines()[0].startswith("no Raft replica answered")
    assert d.services == () and d.events[0].line().startswith("--:--:-- odd")


def test_lagging_members_are_named():
    raw = Raw("a", {"name": "a", "version": 2, "started": 40.0},
              [{"name": "a", "state": "alive", "version": 2},
               {"name": "b", "state": "alive", "version": 1},
               {"name": "c", "state": "dead", "version": 0}])
    h = dashboard(raw, 100.0).header
    assert h.converged == "no: b (v1)" and h.uptime == "1m 00s"


def test_qr_code_is_the_segno_matrix_in_half_blocks():
    import segno

    text = "myc1." + "x" * 300
    lines = qr_lines(text)
    want = [[bool(v) for v in row] for row in
            segno.make(text, error="l", micro=False).matrix_iter(border=2)]
    assert len(lines) == (len(want) + 1) // 2 and {len(line) for line in lines} == {len(want)}
    unmap = {cell: pair for pair, cell in CELLS.items()}
    got = []
    for line in lines:
        pairs = [unmap[ch] for ch in line]
        got += [[p[0] for p in pairs], [p[1] for p in pairs]]
    assert got[:len(want)] == want
    # the top-left finder pattern: dark modules are blank, so its top edge reads ' ▄▄▄▄▄ '
    assert lines[1][2:9] == " " + "\u2584" * 5 + " "


def test_cli_builds_the_operator_app_and_the_console_app(net):
    from agent.cli import build_parser
    from agent.cli.tui import DEFAULT_DATA_DIR, local_channel, operator_app

    p = build_parser()
    assert p.parse_args(["tui", "--local"]).local == DEFAULT_DATA_DIR
    assert p.parse_args(["tui", "--local", "/d"]).local == "/d"
    args = p.parse_args(["tui", "--to", "a:1,b:2"])
    assert (args.to, args.local) == ("a:1,b:2", None)
    c, _ = net
    app = operator_app(str(c.network), ",".join(c.addresses()))
    assert app.actions is not None  # the operator may make tokens and read network.yaml
    assert app.actions.make_token("rhizomorph", timedelta(hours=1)).startswith("myc1.")
    ch = local_channel(Path(c.nodes[0].data_dir))()
    assert ch.socket_path == Path(c.nodes[0].data_dir) / "api.sock"


def test_a_stopped_agent_leaves_no_socket_behind(net):
    """Last in this module: it stops n3."""
    import signal

    from agent.lab.cluster import kill_node, pid_alive
    from support.agents import wait_for

    c, _ = net
    n3 = c.nodes[2]
    sock = Path(n3.data_dir) / "api.sock"
    assert sock.exists()
    kill_node(n3, signal.SIGTERM)
    wait_for(lambda: not pid_alive(n3.pid), what="n3 stopped")
    assert not sock.exists()


def test_a_node_without_the_optional_routes_still_shows():
    """An older node answers 404 for /share and /events: the rest is shown."""
    from support.dashboard import RecordedChannel

    ch = RecordedChannel()
    for route in ("share", "events?n=100"):
        del ch.data[f"10.0.0.1:7946/api/v1/{route}"]
    d = dashboard(poll(ch), ch.started + 60)
    assert d.header.node == "n1" and d.header.authority == "-" and d.events == ()
    assert d.share is None and len(d.members) == 3
