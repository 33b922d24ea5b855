"""`mycelium seed serve|publish`: the Seed spore endpoint and publishing to it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agent.node.enrol import split_addr


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seed", help="serve or publish the seed spore")
    ss = p.add_subparsers(dest="seed_command", metavar="ACTION", required=True)
    s = ss.add_parser("serve", help="serve DIR/spore.json; accept verified newer spores by PUT")
    s.add_argument("dir", help="holds root.json (trust anchor), ca.crt, spore.json")
    s.add_argument("--listen", default="127.0.0.1:7900")
    s.add_argument("--tls", action="store_true", help="require client certificates of the "
                   "network CA (needs DIR/server.crt and DIR/server.key)")
    s.set_defaults(func=cmd_serve)
    pub = ss.add_parser("publish", help="copy the network's spore.json to a path or URL")
    pub.add_argument("location")
    pub.add_argument("--network", metavar="DIR")
    pub.set_defaults(func=cmd_publish)


def cmd_serve(args: argparse.Namespace) -> int:
    from agent.node.seed import seed_app, seed_server_context
    from agent.serve import serve_forever
    from agent.tuning import SEED_MAX_CONNECTIONS

    d = Path(args.dir)
    host, port = split_addr(args.listen)
    ctx = seed_server_context(d) if args.tls else None
    print(f"serving {d / 'spore.json'} on {'https' if ctx else 'http'}://{args.listen}"
          "/spore.json", flush=True)
    asyncio.run(serve_forever(seed_app(d), host, port, ctx, SEED_MAX_CONNECTIONS))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from agent.authoring.netdir import find_network
    from agent.node.seed import publish

    net = find_network(args.network)
    asyncio.run(publish(args.location, net.spore_json.read_bytes()))
    print(f"published {net.spore_json} to {args.location}")
    return 0
