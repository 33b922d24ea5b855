"""`mycelium plan` and `mycelium apply`: a node's share of network.yaml, shown or applied.

Both build the same plan as the agent's reconcile loop (agent/desired/plan.py) and run the same
recipes; `plan` only reads facts (dry run), `apply` changes the target. Also what `push` and
`status` say about services that cannot be placed as asked (`member_notes`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from agent.desired.plan import NodePlan, NodeSettings, assumed_share, plan_from_dict, plan_node
from agent.errors import ConfigError
from agent.views import apply_lines, dry_run_lines, plan_lines
from recipes.params import AgentParams

if TYPE_CHECKING:
    from agent.desired.model import NodeShare
    from agent.node.datadir import NodeDir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show what a node would run and, with a target, which "
                       "operations would change (changes nothing)")
    _args(p)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("apply", help="converge a target (@local, @chroot/DIR) to a node's "
                       "plan now, as the agent does")
    _args(p)
    p.set_defaults(func=cmd_apply)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="node name in network.yaml (default: the data dir's node)")
    p.add_argument("--target", help="@local, @chroot/ABS/DIR (default: none for plan, "
                   "@local for apply)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", help="a node's data dir: use the state it holds and the "
                     "plan its agent made last")
    src.add_argument("--state", metavar="FILE", help="network.yaml to plan from (default: "
                     "the network directory's)")
    p.add_argument("--network", metavar="DIR")
    p.add_argument("--wheelhouse", help="directory of mycelium wheels on the target "
                   f"(default: {AgentParams().wheelhouse})")


def load_plan(args: argparse.Namespace) -> NodePlan:
    from agent.desired.schema import parse_state
    from agent.statefile import read_input

    settings = NodeSettings(AgentParams(wheelhouse=args.wheelhouse)
                            if args.wheelhouse else AgentParams())
    if args.data_dir:
        return _node_plan(Path(args.data_dir), args.node, settings)
    if args.state:
        data, version = read_input(args.state, "state file"), 0
    else:
        from agent.authoring.identity import last_signed_version
        from agent.authoring.netdir import find_network

        net = find_network(args.network)
        data, version = read_input(net.network_yaml, "network.yaml"), last_signed_version(net)
    if not args.node:
        raise ConfigError("give --node NAME (or --data-dir of a node)")
    state = parse_state(data)
    return plan_node(state, version, args.node, assumed_share(state, args.node), settings)


def _node_plan(data_dir: Path, name: str | None, settings: NodeSettings) -> NodePlan:
    """A node's plan from its data dir: the one its agent made last, else one made from the
    state it holds and its share of the placement it last adopted (or, with none, the share
    it would get with every node of the state alive). The node need not be in `nodes:`."""
    from agent.node.datadir import NodeDir

    node = NodeDir(data_dir)
    ident = node.identity()
    name = name or ident.name
    last = data_dir / "plan.json"
    if last.exists():
        plan = plan_from_dict(json.loads(last.read_text()))
        if plan.node == name:
            return plan
    held = node.held()
    if held is None:
        raise ConfigError(f"{data_dir} holds no accepted state yet; push one first")
    env, state = held
    share = _adopted_share(node, name)
    if share is None:
        role, host = (ident.role, ident.listen.rsplit(":", 1)[0]) if name == ident.name \
            else ("", "")
        share = assumed_share(state, name, role, host)
    return plan_node(state, env.version, name, share, settings)


def _adopted_share(node: NodeDir, name: str) -> NodeShare | None:
    from agent.node.held import load_placement

    return load_placement(node)[1].get(name)


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


def cmd_plan(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    target = args.target or ("@local" if args.data_dir else "")
    report = None
    if target:
        from recipes.run import run

        report = run(target, plan.steps(), dry_run=True)
    if args.output == "json":
        out = {"plan": plan.to_dict(), "report": report.to_dict() if report else None}
        print(json.dumps(out, indent=2))
        return 0 if report is None or report.ok else 1
    _print(plan_lines(plan) + dry_run_lines(report, target))
    return 0 if report is None or report.ok else 1


def cmd_apply(args: argparse.Namespace) -> int:
    from recipes.run import run

    plan = load_plan(args)
    _print(plan_lines(plan))
    target = args.target or "@local"
    report = run(target, plan.steps())
    _print(apply_lines(report, target))
    return 0 if report.ok else 1
