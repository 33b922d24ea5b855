"""`python -m agent.node.apply PLAN.json TARGET REPORT.json`: apply one plan, write the report.

Run by the reconcile loop as a subprocess (agent/node/reconcile.py). Exit 0 when every
operation succeeded, 1 otherwise; the report says which operation failed and its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.desired.plan import plan_from_dict
from agent.statefile import atomic_write
from recipes.run import run


def main(argv: list[str]) -> int:
    plan_file, target, report_file = argv
    plan = plan_from_dict(json.loads(Path(plan_file).read_text()))
    report = run(target, plan.steps())
    atomic_write(Path(report_file), json.dumps(report.to_dict()).encode())
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
