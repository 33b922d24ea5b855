"""Facts the recipes read: each runs one command and parses its output in a pure function.

`process` methods take the output lines and nothing else, so the fact cases under
tests/recipe_cases/facts/ can check them without a machine.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pyinfra.api import FactBase


class UnitStatus(FactBase):
    """Enablement and activity of a systemd unit, and whether systemd runs at all.

    `booted` is sd_booted()'s test (/run/systemd/system exists): false in a chroot or a
    rootfs being built, where units can be enabled but not started.
    """

    def command(self, unit: str) -> str:
        u = shlex.quote(unit)
        return (f"echo enabled=$(systemctl is-enabled {u} 2>/dev/null); "
                f"echo active=$(systemctl is-active {u} 2>/dev/null); "
                "[ -d /run/systemd/system ] && echo booted=yes || echo booted=no")

    def process(self, output: list[str]) -> dict[str, Any]:
        kv = dict(line.split("=", 1) for line in output if "=" in line)
        return {"enabled": kv.get("enabled") or "not-found",
                "active": kv.get("active") or "unknown",
                "booted": kv.get("booted") == "yes"}


class Stamp(FactBase):
    """The content of a one-line stamp file the recipes write after an install, or None."""

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return f"[ -f {p} ] && cat {p} || true"

    def process(self, output: list[str]) -> str | None:
        text = "\n".join(output).strip()
        return text or None


class PodmanPods(FactBase):
    """Pods podman runs, by name: {"web-pod": {"status": "Running", "containers": 2}}.

    Empty when podman is absent, so a node that never ran containers plans no removals.
    """

    def command(self) -> str:
        return "command -v podman >/dev/null && podman pod ps --format json || echo '[]'"

    def process(self, output: list[str]) -> dict[str, dict[str, Any]]:
        try:
            rows = json.loads("\n".join(output) or "[]")
        except json.JSONDecodeError:
            return {}
        pods: dict[str, dict[str, Any]] = {}
        for row in rows if isinstance(rows, list) else []:
            name = row.get("Name")
            if isinstance(name, str):
                pods[name] = {"status": row.get("Status", ""),
                              "containers": len(row.get("Containers") or [])}
        return pods
