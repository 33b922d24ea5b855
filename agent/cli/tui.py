"""`mycelium tui`: the console dashboard, for the operator or on a node's console.

Argument parsing only: the app is tui/app.py; it reads the nodes through tui/fetch.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from recipes.params import AgentParams

if TYPE_CHECKING:
    from tui.app import DashboardApp
    from tui.fetch import LocalChannel

DEFAULT_DATA_DIR = AgentParams().data_dir  # where a node's agent keeps its data dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tui", help="the console dashboard: header, members, backbone, "
                       "services, events (live; fails over to the next node)")
    p.add_argument("--to", help="nodes to read, HOST:PORT[,HOST:PORT...] (default: "
                   "$MYCELIUM_NODES, else the seed spore's bootstrap addresses)")
    p.add_argument("--network", metavar="DIR")
    p.add_argument("--local", nargs="?", const=DEFAULT_DATA_DIR, metavar="DATA_DIR",
                   help="read this node's agent through its read-only socket in DATA_DIR "
                   f"(default {DEFAULT_DATA_DIR}; root only, no operator key, no actions)")
    p.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.app import CONSOLE_POLL_INTERVAL, DashboardApp  # Textual loads only here

    if args.local:
        app = DashboardApp(local_channel(Path(args.local)),
                           poll_interval=CONSOLE_POLL_INTERVAL)
    else:
        app = operator_app(args.network, args.to)
    app.run()
    return 0


def local_channel(data_dir: Path) -> Callable[[], LocalChannel]:
    from tui.fetch import LocalChannel

    return lambda: LocalChannel(data_dir)


def operator_app(network: str | None, to: str | None) -> DashboardApp:
    from agent.authoring.netdir import find_network
    from agent.authoring.reach import node_addresses, operator_hypha
    from tui.actions import NODE_TIMEOUT, OperatorActions
    from tui.app import DashboardApp
    from tui.fetch import HyphaChannel

    net = find_network(network)
    addrs, root = node_addresses(to, net), net.root()
    return DashboardApp(lambda: HyphaChannel(operator_hypha(net, addrs, NODE_TIMEOUT), root),
                        OperatorActions(net, addrs))
