"""Node and network commands: agent run, join, node bootstrap, push, status.

Argument parsing and printing only: the push action is agent/cli/push.py, reaching the
nodes agent/authoring/reach.py, and every table agent/views.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.authoring.netdir import find_network
from agent.authoring.reach import fetch_status, node_addresses
from agent.cli.push import push_state
from agent.errors import ConfigError
from agent.views import member_rows, share_rows, status_frame

CLEAR_SCREEN = "\x1b[2J\x1b[H"  # each --watch frame starts on a blank screen

if TYPE_CHECKING:
    from agent.node.datadir import NodeIdentity


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="the node daemon")
    a = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    r = a.add_parser("run", help="run the node agent (joins first if given a token)")
    _node_args(r)
    r.add_argument("--log-level", default="INFO")
    r.add_argument("--gossip-interval", type=float, default=None,
                   help="seconds between gossip rounds (default: network.yaml's, else 0.2)")
    r.add_argument("--apply-target", default="", metavar="TARGET",
                   help="converge this machine to its plan: @local on a node, @chroot/DIR for "
                   "a root filesystem (default: off, so a test agent never changes its host)")
    r.add_argument("--drift-interval", type=float, default=300.0, metavar="SECONDS",
                   help="re-apply the plan this often to correct drift (default: 300)")
    r.add_argument("--seed-interval", type=float, default=30.0, metavar="SECONDS",
                   help="while no sclerotium is in reach, re-read the seed spore (--seed-spore "
                   "and network.yaml's seed locations) this often (default: 30)")
    r.add_argument("--raft-remove-after", type=float, default=60.0, metavar="SECONDS",
                   help="as Raft leader, remove a promoted (dynamic) sclerotium from the Raft "
                   "membership once it has been dead this long (default: 60)")
    r.add_argument("--release-root", default="", metavar="DIR",
                   help="install the release network.yaml names into DIR/releases, switch "
                   "DIR/current to it and restart (default: off: fetch and serve it only)")
    r.add_argument("--release-site", action="append", default=[], metavar="DIR",
                   help="a directory of dependencies release venvs may use instead of "
                   "installing their own (repeatable; the tests share one)")
    r.add_argument("--release-deadline", type=float, default=120.0, metavar="SECONDS",
                   help="a new release that is not healthy this long after the switch is "
                   "rolled back by the watchdog (default: 120)")
    # tests: a command run instead of `python -m agent.node.apply` (same arguments and
    # report), so a staged change can fail without containers (tests/support/apply_standin.py)
    r.add_argument("--apply-command", default="", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_agent_run)

    p = sub.add_parser("join", help="enrol this node (get a certificate) and exit")
    _node_args(p)
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("node", help="operator-side node set-up")
    ns = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    b = ns.add_parser("bootstrap", help="prepare the first sclerotium's data dir from the "
                      "network directory (no root keys are copied)")
    b.add_argument("--data-dir", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--listen", required=True, help="HOST:PORT the agent will listen on")
    b.add_argument("--network", metavar="DIR")
    b.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("push", help="validate, sign with the next version and push "
                       "network.yaml, then wait until all live nodes hold it")
    p.add_argument("file", nargs="?", help="network.yaml (default: the network's own)")
    _to_arg(p)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for convergence (default 60)")
    p.add_argument("--network", metavar="DIR")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("status", help="members, roles, liveness, held version, convergence")
    _to_arg(p)
    p.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    p.add_argument("--shares", action="store_true", help="also ask each live node for its "
                   "share (what it runs, by whose authority, which placement version)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--network", metavar="DIR")
    p.set_defaults(func=cmd_status)


def _node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="node state directory")
    p.add_argument("--listen", default="0.0.0.0:7946", help="HOST:PORT for the API and "
                   "gossip (enrolment is served on PORT+1)")
    p.add_argument("--advertise", help="HOST:PORT peers should use (default: --listen)")
    p.add_argument("--seed-spore", help="path or URL of spore.json")
    p.add_argument("--token", help="join token (or @FILE); only needed the first time")
    p.add_argument("--token-file", metavar="PATH", help="read the join token from PATH (kept "
                   "off the command line, where `ps` shows it) and delete PATH once enrolled")
    p.add_argument("--name", help="node name (default: the hostname)")
    p.add_argument("--join", action="append", default=[], metavar="HOST:PORT",
                   help="a known node to join through (repeatable)")


def _to_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", help="nodes to talk to, HOST:PORT[,HOST:PORT...] (default: "
                   "$MYCELIUM_NODES, else the seed spore's bootstrap addresses)")


def _token(value: str | None) -> str | None:
    if value and value.startswith("@"):
        return Path(value[1:]).read_text().strip()
    return value


def _enrol(args: argparse.Namespace) -> NodeIdentity:
    """Enrol unless enrolled; a --token-file is deleted once this node holds a certificate."""
    from agent.node.daemon import ensure_enrolled
    from agent.node.datadir import NodeDir

    node, token = NodeDir(Path(args.data_dir)), _token(args.token)
    if args.token_file and not node.enrolled():
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {e.strerror}") from e
    ident = asyncio.run(ensure_enrolled(node, args.listen, args.advertise, args.seed_spore,
                                        token, args.name or socket.gethostname(), args.join))
    if args.token_file:
        Path(args.token_file).unlink(missing_ok=True)
    return ident


def cmd_agent_run(args: argparse.Namespace) -> int:
    from agent.node.daemon import AgentOptions, run_agent

    if args.token_file:
        _enrol(args)
    opts = AgentOptions(args.listen, tuple(args.join), args.gossip_interval, args.apply_target,
                        args.drift_interval, args.seed_spore, args.seed_interval,
                        args.raft_remove_after, release_root=args.release_root,
                        release_site=tuple(args.release_site),
                        release_deadline=args.release_deadline,
                        apply_command=tuple(shlex.split(args.apply_command)))
    return asyncio.run(run_agent(args.data_dir, opts, advertise=args.advertise,
                                 token=_token(args.token),
                                 name=args.name or socket.gethostname(),
                                 log_level=args.log_level))


def cmd_join(args: argparse.Namespace) -> int:
    ident = _enrol(args)
    print(f"enrolled {ident.name} as {ident.role} in network {ident.network_id}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from agent.authoring.bootstrap import bootstrap_first_node

    net = find_network(args.network)
    ident = bootstrap_first_node(net, Path(args.data_dir), args.name, args.listen)
    print(f"prepared {args.data_dir} for {ident.name} (sclerotium) on {ident.listen}; "
          f"seed spore now lists it")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    return push_state(args.network, args.file, args.to, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    net = find_network(args.network)
    addrs = node_addresses(args.to, net)
    while True:
        members, shares, notes = asyncio.run(fetch_status(net, addrs, args.shares))
        if args.output == "json":
            out: Any = {"members": members, "shares": shares} if args.shares else members
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            if args.watch:
                sys.stdout.write(CLEAR_SCREEN)
            print(status_frame(member_rows(members), share_rows(shares), time.time(), notes))
        if not args.watch:
            return 0
        time.sleep(2)
