"""`mycelium validate` and `mycelium deploy`: checking and editing network.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.errors import SchemaError
from agent.statefile import atomic_write, read_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check network.yaml against schema v1")
    p.add_argument("file", help="network.yaml to check")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("deploy", help="add or update a containerised service (endomycete) "
                       "in network.yaml, keeping comments")
    p.add_argument("--image", required=True, help="container image, e.g. nginx")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--name", help="service name (default: from the image)")
    p.add_argument("--file", help="network.yaml (default: the network's own)")
    p.add_argument("--push", action="store_true", help="then sign and push it (mycelium push)")
    p.add_argument("--to", help="nodes for --push, HOST:PORT[,...]")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--network", metavar="DIR")
    p.set_defaults(func=cmd_deploy)


def cmd_validate(args: argparse.Namespace) -> int:
    from agent.desired.schema import parse_checked

    try:
        state, warnings = parse_checked(read_input(args.file, "network.yaml"), args.file)
    except SchemaError as e:
        for p in e.problems:
            print(p, file=sys.stderr)  # every error on stderr, like the YAML ones
        return 1
    for w in warnings:
        print(w, file=sys.stderr)
    print(f"{args.file}: ok ({len(state.nodes)} nodes, "
          f"{len(state.endomycetes) + len(state.endophytes)} services)")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from agent.desired.edit import add_endomycete, service_name

    if args.file:
        path = Path(args.file)
    else:
        from agent.authoring.netdir import find_network

        path = find_network(args.network).network_yaml
    name = args.name or service_name(args.image)
    out = add_endomycete(read_input(path, "network.yaml"), name, args.image, args.replicas)
    atomic_write(path, out)  # a crash leaves the old file or the new one, never half
    print(f"{path}: service {name!r} = {args.image} x{args.replicas}")
    if args.push:
        from agent.cli.push import push_state

        return push_state(args.network, path, args.to, args.timeout)
    return 0
