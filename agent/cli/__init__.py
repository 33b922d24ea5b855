"""The `mycelium` command: argument parsing and one-line errors.

Each area registers its subcommands from its own module (listed in COMMAND_MODULES):
the module has `register(subparsers)` and sets `func` on each parser. A handler returns
an exit code; a MyceliumError becomes one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent.errors import MyceliumError

COMMAND_MODULES: list[str] = [
    "agent.cli.identity",
    "agent.cli.node",
    "agent.cli.cluster",
    "agent.cli.state",
    "agent.cli.seed",
    "agent.cli.plan",
    "agent.cli.vm",
    "agent.cli.tui",
    "agent.cli.release",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mycelium",
        description="Digital Mycelium Network: make a network's identity, edit and sign its "
        "network.yaml, run the node agent, and watch the network converge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MyceliumError as e:
        print(f"mycelium {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mycelium {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
