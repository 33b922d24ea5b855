"""`mycelium cluster up|down`: a throw-away local network for trying mycelium and tests."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="start or stop a throw-away local network")
    cs = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = cs.add_parser("up", help="init a network and start N agents on this machine")
    up.add_argument("--nodes", type=int, default=3, help="number of agents (default 3)")
    up.add_argument("--netns", action="store_true",
                    help="one network namespace per node on a bridge (needs root)")
    up.add_argument("--sclerotia", type=int, default=3,
                    help="how many of the nodes are sclerotia (default 3)")
    up.add_argument("--dir", default="mycelium-cluster", help="where everything goes")
    up.set_defaults(func=cmd_up)
    down = cs.add_parser("down", help="stop the agents and remove what `up` made")
    down.add_argument("--dir", default="mycelium-cluster")
    down.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    from agent.lab.cluster import cluster_up, env_lines

    cluster = cluster_up(Path(args.dir), args.nodes, args.netns, args.sclerotia)
    env = Path(args.dir) / "env"
    env.write_text(env_lines(cluster) + "\n")
    print(f"\n{len(cluster.nodes)} agents running. To use this network:\n")
    print(f". {env}    # sets MYCELIUM_NETWORK and MYCELIUM_NODES")
    print("mycelium status")
    print("$EDITOR $MYCELIUM_NETWORK/network.yaml && mycelium push")
    print(f"\nStop it with: mycelium cluster down --dir {args.dir}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from agent.lab.cluster import cluster_down

    cluster_down(Path(args.dir))
    print(f"cluster in {args.dir} stopped and removed")
    return 0
