"""The daemon's process stays light (issue 16): it never imports pyinfra or Textual. Apply
runs pyinfra in its own subprocess (agent/node/apply.py) and the TUI is its own process.
Checked in a fresh interpreter, since this one has imported everything the suite uses."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pyinfra", "textual", "tui", "gevent", "paramiko")

PROBE = f"""
import sys
def heavy():
    return ",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
from agent.cli import build_parser
build_parser()  # every subcommand's module, as `mycelium agent run` loads them
import agent.node.daemon, agent.node.reconcile
print(heavy())
import agent.node.apply  # the apply subprocess: here pyinfra comes in (the probe works)
print(heavy())
"""


def test_the_daemon_imports_neither_pyinfra_nor_textual():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)
    daemon, apply = out.stdout.splitlines()
    assert daemon == "", f"the daemon's process imports {daemon}"
    assert "pyinfra" in apply
