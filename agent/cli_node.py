"""Node and network commands: agent run, join, node bootstrap, push, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from agent.client import Hypha, client_context
from agent.errors import ConfigError, DataError, MyceliumError, PeerError
from agent.netdir import NetworkDir, find_network


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


def cmd_agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import AgentOptions, run_agent

    opts = AgentOptions(args.listen, tuple(args.join), args.gossip_interval, args.apply_target,
                        args.drift_interval, args.seed_spore, args.seed_interval,
                        args.raft_remove_after)
    return asyncio.run(run_agent(args.data_dir, opts, advertise=args.advertise,
                                 token=_token(args.token),
                                 name=args.name or socket.gethostname(),
                                 log_level=args.log_level))


def cmd_join(args: argparse.Namespace) -> int:
    from agent.daemon import ensure_enrolled
    from agent.nodedir import NodeDir

    ident = asyncio.run(ensure_enrolled(NodeDir(Path(args.data_dir)), args.listen,
                                        args.advertise, args.seed_spore, _token(args.token),
                                        args.name or socket.gethostname(), args.join))
    print(f"enrolled {ident.name} as {ident.role} in network {ident.network_id}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from agent.bootstrap import bootstrap_first_node

    net = find_network(args.network)
    ident = bootstrap_first_node(net, Path(args.data_dir), args.name, args.listen)
    print(f"prepared {args.data_dir} for {ident.name} (sclerotium) on {ident.listen}; "
          f"seed spore now lists it")
    return 0


def addresses(args: argparse.Namespace, net: NetworkDir | None) -> list[str]:
    raw = args.to or os.environ.get("MYCELIUM_NODES", "")
    if raw:
        return [a.strip() for a in raw.split(",") if a.strip()]
    if net is not None and net.spore_json.exists():
        from agent.spore import load_spore

        boot = load_spore(net.spore_json.read_bytes()).bootstrap
        if boot:
            return list(boot)
    raise ConfigError("no node address: pass --to HOST:PORT or set MYCELIUM_NODES")


def operator_hypha(net: NetworkDir, addrs: list[str], timeout: float = 10.0) -> Hypha:
    return Hypha(addrs, client_context(net.operator_crt, net.operator_key, net.ca_crt),
                 timeout)


def cmd_push(args: argparse.Namespace) -> int:
    from agent.identity import sign_state
    from agent.schema import parse_state

    net = find_network(args.network)
    src = Path(args.file) if args.file else net.network_yaml
    data = src.read_bytes()
    parse_state(data, str(src))
    addrs = addresses(args, net)
    version, env = sign_state(net, data)
    return asyncio.run(_push(net, addrs, version, env, args.timeout))


async def _push(net: NetworkDir, addrs: list[str], version: int, env: bytes,
                timeout: float) -> int:
    async with operator_hypha(net, addrs) as h:
        addr, status, body = await h.call("POST", "/api/v1/envelope", env)
        if status != 200:
            raise DataError(f"{addr} refused version {version}: {body.get('error', status)}")
        print(f"pushed version {version} to {addr}", file=sys.stderr)
        deadline = time.monotonic() + timeout
        while True:
            members = await h.get("/api/v1/members")
            live = [m for m in members if m.get("state") in ("alive", "suspect")]
            done = [m for m in live if int(m.get("version") or 0) >= version]
            _bar(len(done), len(live), version)
            if live and len(done) == len(live):
                print(file=sys.stderr)
                print(f"all {len(live)} live nodes hold version {version}")
                return 0
            if time.monotonic() > deadline:
                print(file=sys.stderr)
                lag = ", ".join(f"{m['name']} (v{m.get('version') or 0})" for m in live
                                if m not in done)
                raise PeerError(f"timed out after {timeout:.0f}s; not yet at v{version}: {lag}")
            await asyncio.sleep(0.3)


def _bar(done: int, total: int, version: int) -> None:
    width = 30
    fill = int(width * done / total) if total else 0
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} nodes at "
                     f"v{version}")
    sys.stderr.flush()


def cmd_status(args: argparse.Namespace) -> int:
    net = find_network(args.network)
    addrs = addresses(args, net)

    async def once() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with operator_hypha(net, addrs) as h:
            members = await h.get("/api/v1/members")
            shares = []
            if args.shares:
                for m in members:
                    if m.get("state") == "alive":
                        try:
                            shares.append(await h.get("/api/v1/share", m["addr"]))
                        except MyceliumError as e:
                            shares.append({"node": m["name"], "error": str(e)})
            return members, shares

    while True:
        members, shares = asyncio.run(once())
        if args.output == "json":
            out: Any = {"members": members, "shares": shares} if args.shares else members
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            if args.watch:
                sys.stdout.write("\x1b[2J\x1b[H")
            print(format_members(members))
            if shares:
                print()
                print(format_shares(shares))
        if not args.watch:
            return 0
        time.sleep(2)


def _apply_cell(st: dict[str, Any]) -> str:
    """Reconcile status as gossiped (agent/reconcile.py summary): ok, waiting, degraded..."""
    cell = str(st.get("status") or "-")
    if st.get("failed"):
        cell += f" ({st['failed']} failed)"
    return cell


def _raft_cell(m: dict[str, Any]) -> str:
    raft = m.get("raft") or {}
    if not raft.get("addr"):
        return "-"
    return "leader" if raft.get("leader") else "member"


def format_members(members: list[dict[str, Any]], now: float | None = None) -> str:
    now = now or time.time()
    head = ("NAME", "ROLE", "STATE", "RAFT", "VERSION", "APPLIED", "APPLY", "PLACED", "ADDRESS",
            "SEEN")
    rows = [head]
    for m in sorted(members, key=lambda m: m.get("name", "")):
        st = m.get("status") or {}
        seen = m.get("last_seen")
        rows.append((str(m.get("name", "?")), str(m.get("role", "?")), str(m.get("state", "?")),
                     _raft_cell(m), f"v{m.get('version') or 0}",
                     f"v{st.get('applied_version', 0)}", _apply_cell(st),
                     f"p{m.get('pv') or 0}", str(m.get("addr", "")),
                     f"{max(0.0, now - seen):.0f}s ago" if seen else "-"))
    return _table(rows)


def format_shares(shares: list[dict[str, Any]]) -> str:
    """Each node's share as it reports it (/api/v1/share)."""
    rows = [("NODE", "AUTHORITY", "PLACED", "K3S", "SERVICES", "VMS", "BACKUPS")]
    for s in sorted(shares, key=lambda s: s.get("node", "")):
        if "error" in s:
            rows.append((str(s.get("node")), "error: " + str(s["error"])[:60], "", "", "", "",
                         ""))
            continue
        sh = s.get("share") or {}
        rows.append((str(s.get("node")), str(s.get("authority")),
                     f"p{s.get('placement_version') or 0}", str(sh.get("k3s_role") or "-"),
                     ",".join(sh.get("endomycetes") or []) or "-",
                     ",".join(sh.get("endophytes_primary") or []) or "-",
                     ",".join(sh.get("endophytes_backup") or []) or "-"))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
