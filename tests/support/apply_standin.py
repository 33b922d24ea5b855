"""A stand-in for `python -m agent.node.apply PLAN TARGET REPORT` (the agent's hidden
`--apply-command`): it changes nothing, and fails when a service in the plan has the image
`localhost/broken`, so a bad manifest fails its apply without containers. Same exit codes
and report shape as the real one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BROKEN = "localhost/broken"


def main(argv: list[str]) -> int:
    plan_file, _target, report_file = argv
    plan = json.loads(Path(plan_file).read_text())
    manifests = (plan.get("containers") or {}).get("manifests") or {}
    bad = sorted(n for n, m in manifests.items() if BROKEN in m)
    ops = [{"name": f"containers: {n}", "success": n not in bad, "changed": True,
            "output": f"image {BROKEN} cannot be pulled" if n in bad else "",
            "commands": []} for n in sorted(manifests)]
    Path(report_file).write_text(json.dumps({"ok": not bad, "ops": ops, "error": ""}))
    print(f"stand-in apply of content {plan.get('content')}: "
          + (f"failed: {', '.join(bad)}" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
