"""`mycelium vm list|status|console|migrate`: the endophyte VMs, as the nodes running them
say, and planned moves.

Argument parsing and printing only: asking the nodes is agent/authoring/reach.py, the
console agent/authoring/console.py, a move agent/authoring/migrate.py, the tables
agent/views.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from agent.authoring.netdir import find_network
from agent.authoring.reach import fetch_vms, node_addresses
from agent.errors import ConfigError
from agent.views import backup_rows, vm_rows, vm_status_lines, vms_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="endophyte VMs: where they run, their state, their console")
    vs = p.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    ls = vs.add_parser("list", help="every VM the live nodes supervise")
    st = vs.add_parser("status", help="one VM: node, state (and why), accel, QMP, uptime")
    st.add_argument("name")
    co = vs.add_parser("console", help="the VM's serial console (Ctrl-] leaves)")
    co.add_argument("name")
    co.add_argument("--for", dest="watch_for", type=float, metavar="SECONDS",
                    help="only watch the output this long, then exit (no typing)")
    co.add_argument("--tail", action="store_true",
                    help="print the end of the serial log and exit")
    mi = vs.add_parser("migrate", help="planned move of a replicated VM to another node, "
                       "its memory kept (the guest pauses for the last checkpoint)")
    mi.add_argument("name")
    mi.add_argument("--to", dest="node", required=True, metavar="NODE",
                    help="the node to run it on (made a backup first if it is not one)")
    mi.add_argument("--nodes", dest="to", metavar="HOST:PORT[,...]",
                    help="nodes to talk to (default: $MYCELIUM_NODES, else the seed "
                    "spore's bootstrap addresses)")
    mi.add_argument("--network", metavar="DIR")
    mi.set_defaults(func=cmd_migrate)
    for q in (ls, st, co):
        q.add_argument("--to", help="nodes to talk to, HOST:PORT[,...] (default: "
                       "$MYCELIUM_NODES, else the seed spore's bootstrap addresses)")
        q.add_argument("--network", metavar="DIR")
    for q in (ls, st):
        q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ls.set_defaults(func=cmd_list)
    st.set_defaults(func=cmd_status)
    co.set_defaults(func=cmd_console)


def _replies(args: argparse.Namespace) -> list[dict]:
    net = find_network(args.network)
    return asyncio.run(fetch_vms(net, node_addresses(args.to, net)))


def cmd_list(args: argparse.Namespace) -> int:
    replies = _replies(args)
    if args.output == "json":
        print(json.dumps(replies, indent=2, sort_keys=True))
        return 0
    print(vms_table(vm_rows(replies)))
    for r in replies:
        if "error" in r:
            print(f"{r['node']}: not asked ({r['error']})", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    replies = _replies(args)
    rows = [v for v in vm_rows(replies) if v.name == args.name]
    if args.output == "json":
        print(json.dumps([v.__dict__ for v in rows], indent=2, sort_keys=True))
    else:
        print("\n".join(vm_status_lines(rows, args.name, backup_rows(replies))))
    return 0 if rows else 1


def cmd_console(args: argparse.Namespace) -> int:
    from agent.authoring.console import run_console
    from agent.authoring.reach import operator_hypha

    net = find_network(args.network)
    replies = asyncio.run(fetch_vms(net, node_addresses(args.to, net)))
    where = [r for r in replies for v in r.get("vms") or [] if v.get("name") == args.name]
    if not where:
        raise ConfigError(f"no live node supervises VM {args.name}; see `mycelium vm list`")
    addr = where[0]["addr"]
    if args.tail:
        async def tail() -> dict:
            async with operator_hypha(net, [addr]) as h:
                return await h.get(f"/api/v1/vms/{args.name}/serial?bytes=65536")

        sys.stdout.write(asyncio.run(tail())["text"])
        return 0
    asyncio.run(run_console(net, addr, args.name, sys.stdout.buffer, args.watch_for))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from agent.authoring.migrate import migrate

    net = find_network(args.network)
    r = asyncio.run(migrate(net, node_addresses(args.to, net), args.name, args.node,
                            say=lambda line: print(line, flush=True)))
    print(f"{args.name} runs on {args.node} ({r.boot}): paused {r.pause_s:.2f} s "
          f"(final checkpoint {r.seq}: migrate {r.migrate_s:.2f} s), {r.total_s:.1f} s in all")
    return 0
