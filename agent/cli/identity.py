"""Operator commands on a network directory: init, keys rotate, sign, verify, token, cert."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.authoring.netdir import find_network
from agent.statefile import VersionStore, atomic_write, read_input
from agent.trust.rules import verify_envelope
from agent.trust.signed import now_utc, parse_duration
from agent.trust.tokens import ROLES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a new network: root keys, CA, seed spore, "
                       "network.yaml")
    p.add_argument("--network-name", required=True, help="human name of the network")
    p.add_argument("--dir", help="directory to create (default: ./NAME)")
    p.add_argument("--root-keys", type=int, default=1, help="number of root keys (default 1)")
    p.add_argument("--threshold", type=int, default=1,
                   help="root signatures required on every state (default 1)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("keys", help="root key management")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    r = ks.add_parser("rotate", help="make root version N+1 with fresh keys, signed by "
                      "version N's keys and the new ones")
    _network_arg(r)
    r.add_argument("--root-keys", type=int, default=1)
    r.add_argument("--threshold", type=int, default=1)
    r.set_defaults(func=cmd_rotate)

    p = sub.add_parser("sign", help="wrap network.yaml in a signed envelope with the next "
                       "version")
    p.add_argument("file", nargs="?", help="network.yaml (default: the network's own)")
    p.add_argument("-o", "--output", required=True, help="envelope file to write")
    p.add_argument("--version", type=int, help="explicit version (must be above the last)")
    p.add_argument("--ttl", default="365d", help="validity, e.g. 30d (default 365d)")
    _network_arg(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="check an envelope against the network's root keys")
    p.add_argument("file", help="envelope file")
    p.add_argument("--accept-into", metavar="DIR",
                   help="also require a version above the one recorded in DIR and record it "
                   "(what a node does when it accepts a state)")
    _network_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("token", help="join tokens")
    ts = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    t = ts.add_parser("create", help="make a join token for one new node")
    t.add_argument("--role", choices=ROLES, default="rhizomorph")
    t.add_argument("--ttl", default="24h", help="validity, e.g. 15m, 24h (default 24h)")
    t.add_argument("--node-name", help="only admit a node of this name")
    t.add_argument("--uses", type=int, default=1, metavar="N",
                   help="how many nodes the token admits, counted by the sclerotia "
                   "(default 1)")
    t.add_argument("--admin", action="store_true", help="sign with a delegated admin key")
    _network_arg(t)
    t.set_defaults(func=cmd_token)

    p = sub.add_parser("cert", help="node certificates")
    cs = p.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    c = cs.add_parser("issue", help="issue a node certificate from a CSR and a join token")
    c.add_argument("--csr", required=True, help="PEM certificate signing request")
    c.add_argument("--token", required=True, help="join token (or @FILE)")
    c.add_argument("--node-name", required=True)
    c.add_argument("--address", action="append", default=[], help="IP or DNS name for SAN")
    c.add_argument("-o", "--output", required=True, help="certificate file to write")
    _network_arg(c)
    c.set_defaults(func=cmd_cert_issue)


def _network_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", metavar="DIR",
                   help="network directory (default: $MYCELIUM_NETWORK, else the current "
                   "directory or a parent)")


def cmd_init(args: argparse.Namespace) -> int:
    from agent.authoring.identity import init_network

    path = Path(args.dir or args.network_name)
    net = init_network(path, args.network_name, args.root_keys, args.threshold)
    root = net.root()
    print(f"created network {root.network_name!r} (id {root.network_id}) in {path}/")
    print(f"  {net.network_yaml.name}   desired state: edit it, then `mycelium sign` / "
          "`mycelium push`")
    print(f"  keys/           {args.root_keys} root key(s), threshold {args.threshold} "
          "(keep them off the nodes)")
    print("  ca.crt, ca.key  network CA for node certificates")
    print("  spore.json      signed seed spore")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from agent.authoring.identity import rotate_root

    net = find_network(args.network)
    root = rotate_root(net, args.root_keys, args.threshold)
    print(f"root version {root.version}: {len(root.role('root').keyids)} key(s), threshold "
          f"{root.role('root').threshold}; old keys moved to {net.keys_dir / 'retired'}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from agent.authoring.identity import sign_state
    from agent.desired.schema import parse_state

    net = find_network(args.network)
    src = Path(args.file) if args.file else net.network_yaml
    data = read_input(str(src), "network.yaml")
    parse_state(data, str(src))  # never sign a state nodes would refuse
    version, env = sign_state(net, data, args.version, parse_duration(args.ttl))
    atomic_write(Path(args.output), env)
    print(f"signed {src} as version {version} -> {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.desired.schema import parse_state

    net = find_network(args.network)
    root = net.root()
    data = read_input(args.file, "envelope")
    store = VersionStore(Path(args.accept_into)) if args.accept_into else None
    held = store.version() if store else 0
    env = verify_envelope(data, root, held, now_utc())
    state = parse_state(env.payload, f"{args.file} (payload)")
    if store:
        store.record(env.version, data)
    print(f"{args.file}: valid, version {env.version} of network {state.network!r} "
          f"({env.network_id}), expires {env.expires:%Y-%m-%d}"
          + (f"; recorded in {args.accept_into}" if store else ""))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from agent.authoring.identity import make_token

    print(make_token(find_network(args.network), args.role, parse_duration(args.ttl),
                     args.node_name, admin=args.admin, uses=args.uses))
    return 0


def cmd_cert_issue(args: argparse.Namespace) -> int:
    from agent.node.enrol import issue_for_token

    net = find_network(args.network)
    token = args.token
    if token.startswith("@"):
        token = read_input(token[1:], "token file").decode().strip()
    cert = issue_for_token(net.root(), net.ca_key.read_bytes(), net.ca_crt.read_bytes(),
                           read_input(args.csr, "CSR"), token, args.node_name, args.address)
    atomic_write(Path(args.output), cert)
    print(f"issued certificate for {args.node_name} -> {args.output}", file=sys.stderr)
    return 0
