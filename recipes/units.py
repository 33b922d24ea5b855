"""Operation for systemd units that works both on a running node and in a rootfs build.

In a chroot only unit files can be changed (`systemctl enable` works offline); starting
needs a running systemd, so the operation says it skipped that instead of failing.
"""

from __future__ import annotations

from collections.abc import Generator

from pyinfra import host
from pyinfra.api import operation

from recipes.facts import UnitStatus


def _commands(unit: str, st: dict, enabled: bool, running: bool, restarted: bool,
              daemon_reload: bool) -> list[str]:
    cmds = []
    if daemon_reload and st["booted"]:
        cmds.append("systemctl daemon-reload")
    # static/indirect units are pulled in by others: there is nothing to enable
    enableable = st["enabled"] not in ("static", "alias", "indirect", "generated")
    if enabled and enableable and st["enabled"] != "enabled":
        cmds.append(f"systemctl enable {unit}")
    elif not enabled and st["enabled"] == "enabled":
        cmds.append(f"systemctl disable {unit}")
    if not st["booted"]:
        return cmds
    active = st["active"] == "active"
    if running and not active:
        cmds.append(f"systemctl start {unit}")
    elif running and restarted:
        cmds.append(f"systemctl restart {unit}")
    elif not running and active:
        cmds.append(f"systemctl stop {unit}")
    return cmds


@operation()
def service(unit: str, enabled: bool = True, running: bool = True,
            restarted: bool = False, daemon_reload: bool = False) -> Generator[str]:
    """Make `unit` enabled/running as asked; `restarted` restarts a running unit (config
    changed) and `daemon_reload` reloads unit files first (a unit file changed)."""
    st = host.get_fact(UnitStatus, unit=unit)
    cmds = _commands(unit, st, enabled, running, restarted, daemon_reload)
    yield from cmds
    if not st["booted"] and running:
        host.noop(f"{unit}: not started (systemd is not running here; starts at boot)")
    elif not cmds:
        host.noop(f"{unit} is {st['enabled']} and {st['active']}")
