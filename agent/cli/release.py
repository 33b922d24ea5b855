"""`mycelium release create|show|add`: make, inspect and seed release artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    register_rollout(sub)
    p = sub.add_parser("release", help="make, inspect and seed agent releases")
    rs = p.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    c = rs.add_parser("create", help="pack the agent and its dependency wheels into one "
                      "content-addressed artifact; prints its sha256")
    c.add_argument("--out", default="dist", metavar="DIR", help="where the .tar goes (dist)")
    c.add_argument("--wheelhouse", metavar="DIR", help="use these wheels (e.g. the image "
                   "build's) instead of running pip wheel")
    c.add_argument("--source", metavar="DIR", help="checkout to build the agent wheel from")
    c.add_argument("--arch", choices=("x86_64", "aarch64"), help="for nodes of this "
                   "architecture on the images' Python 3.11 (default: this machine's "
                   "Python and architecture)")
    c.set_defaults(func=cmd_create)
    s = rs.add_parser("show", help="check an artifact and print its manifest")
    s.add_argument("file")
    s.set_defaults(func=cmd_show)
    a = rs.add_parser("add", help="check an artifact and put it into a node's data dir, "
                      "which then serves it to its peers")
    a.add_argument("file")
    a.add_argument("--data-dir", required=True)
    a.set_defaults(func=cmd_add)
    w = rs.add_parser("watchdog", help="(run by the agent unit, outside the agent) commit a "
                      "pending release switch once the new agent is healthy, or switch back "
                      "after its deadline")
    w.add_argument("--root", default="/opt/mycelium", help="the release root (venvs, current)")
    w.add_argument("--data-dir", default="/var/lib/mycelium", help="where health.json is")
    w.add_argument("--count-start", action="store_true", help="count an agent start (as "
                   "ExecStartPre): a crash loop is rolled back after --max-starts")
    w.add_argument("--max-starts", type=int, default=0, metavar="N")
    w.add_argument("--restart-unit", default="", metavar="UNIT", help="after a rollback, "
                   "restart this systemd unit (the timer's run; ExecStartPre needs none)")
    w.set_defaults(func=cmd_watchdog)
    st = rs.add_parser("status", help="this machine's releases: current, previous, pending, "
                       "rolled back, and the agent's health")
    st.add_argument("--root", default="/opt/mycelium")
    st.add_argument("--data-dir", default="/var/lib/mycelium")
    st.set_defaults(func=cmd_status)


def _describe(sha: str, m) -> str:
    return (f"release {m.name} {m.version}: {len(m.files)} wheels, python "
            f"{','.join(m.python)}, architectures {','.join(m.architectures)}\n"
            f"network.yaml:\n  release: {{version: {m.version}, sha256: {sha}}}")


def cmd_create(args: argparse.Namespace) -> int:
    from agent.authoring.release import SOURCE, create_release

    path, sha, m = create_release(Path(args.out),
                                  Path(args.wheelhouse) if args.wheelhouse else None,
                                  Path(args.source) if args.source else SOURCE, args.arch)
    print(f"wrote {path}\n{_describe(sha, m)}")
    print(sha)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from agent.node.releases import file_sha256, read_manifest
    from agent.trust.encoding import dump_json

    m = read_manifest(Path(args.file))
    print(dump_json(m.to_dict()).decode(), end="")
    print(_describe(file_sha256(Path(args.file)), m))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from agent.node.datadir import NodeDir
    from agent.node.releases import ReleaseStore

    sha, m = ReleaseStore(NodeDir(Path(args.data_dir)).path / "releases").add(Path(args.file))
    print(f"{args.data_dir} holds release {m.version} ({sha})")
    return 0


def cmd_watchdog(args: argparse.Namespace) -> int:
    import subprocess

    from agent.node.selfupdate import HEALTH, ReleaseRoot

    root = ReleaseRoot(Path(args.root))
    root.ensure_current()
    before = root.read().get("pending") or {}
    verdict = root.watchdog(Path(args.data_dir) / HEALTH, count_start=args.count_start,
                            max_starts=args.max_starts,
                            artifacts=Path(args.data_dir) / "releases")
    what = f"{before.get('version', '')} ({str(before.get('sha256', ''))[:12]})"
    line = {"none": "no release switch pending",
            "wait": f"release {what} pending: not healthy yet",
            "healthy": f"release {what} healthy: committed",
            "rollback": f"release {what} not healthy in time: switched back to "
                        f"{root.target()}"}[verdict]
    print(f"watchdog: {verdict}: {line}", flush=True)
    if verdict == "rollback" and args.restart_unit:
        subprocess.run(["systemctl", "restart", "--no-block", args.restart_unit], check=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.node.selfupdate import HEALTH, Health, ReleaseRoot
    from agent.trust.encoding import dump_json

    root = ReleaseRoot(Path(args.root))
    health = Health.read(Path(args.data_dir) / HEALTH)
    print(f"current -> {root.target()}")
    print(dump_json({**root.read(), "health": health.__dict__ if health else None}).decode(),
          end="")
    return 0


def register_rollout(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="a staged rollout of a release (or, with --services, of "
                       "a state change): status, pause, resume, abort")
    p.add_argument("action", choices=("status", "pause", "resume", "abort"))
    p.add_argument("--services", action="store_true",
                   help="the staged state change (a service's new image or manifest) instead "
                   "of the release rollout")
    p.add_argument("--to", metavar="HOST:PORT,...", help="nodes to ask (default: "
                   "$MYCELIUM_NODES, else the seed spore's bootstrap list)")
    p.add_argument("--network", metavar="DIR")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_rollout)


def cmd_rollout(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from agent.authoring.netdir import find_network
    from agent.authoring.reach import node_addresses, operator_hypha
    from agent.errors import PeerError
    from agent.views import rollout_lines, staged_lines

    net = find_network(args.network)
    addrs = node_addresses(args.to, net)
    kind = "state" if args.services else "release"
    path = f"/api/v1/rollout?kind={kind}"

    async def go() -> object:
        async with operator_hypha(net, addrs) as h:
            if args.action == "status":
                return await h.get(path)
            errors = []
            body = json.dumps({"action": args.action, "kind": kind}).encode()
            status = 0
            for a in addrs:  # only a sclerotium (a Raft replica) can commit it
                for _ in range(3):  # the leader may move the rollout between read and write
                    try:
                        _, status, reply = await h.call("POST", "/api/v1/rollout", body,
                                                        addr=a)
                    except PeerError as e:
                        errors.append(str(e))
                        break
                    if status == 200:
                        return await h.get(path, addr=a)
                    said = str((reply or {}).get("error", status))
                    if "moved meanwhile" not in said:
                        errors.append(f"{a}: {said}")
                        break
                if status == 409 and errors:
                    break
            raise PeerError(f"rollout {args.action} refused: " + "; ".join(errors))

    view = asyncio.run(go())
    if args.output == "json":
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print("\n".join(staged_lines(view) if args.services else rollout_lines(view)))
    return 0
