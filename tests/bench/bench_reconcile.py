"""Reconcile figures on a real rootfs: first apply of base + agent, then a no-op apply.

Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_reconcile.py
Targets (issue 5): no-op reconcile under 2 s.
"""

from __future__ import annotations

import shutil
import time

import pytest

from agent.desired.plan import assumed_share, plan_node
from agent.desired.schema import parse_state
from recipes.run import run
from support.rootfs import fresh_rootfs, wheels

pytestmark = pytest.mark.bench
STATE = b"""schema: 1
network: {name: bench}
nodes: [{name: node1}]
users: [{name: admin, sudo: true}]
"""


def test_first_and_noop_apply_times(tmp_path):
    root = fresh_rootfs(tmp_path / "root")
    shutil.copytree(wheels(tmp_path / "w"), root / "opt/mycelium/wheels")
    state = parse_state(STATE)
    plan = plan_node(state, 1, "node1", assumed_share(state, "node1"))
    target = f"@chroot{root}"
    t = time.monotonic()
    first = run(target, plan.steps())
    first_s = time.monotonic() - t
    assert first.ok, first.error
    noop = []
    for _ in range(3):
        t = time.monotonic()
        r = run(target, plan.steps())
        noop.append(time.monotonic() - t)
        assert r.ok and not r.changed
    print(f"\nfirst apply base+agent: {first_s:.1f} s ({len(first.changed)} operations "
          f"changed); no-op apply: best {min(noop):.2f} s, worst {max(noop):.2f} s "
          f"({len(r.ops)} operations)")
