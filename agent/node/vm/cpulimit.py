"""A CPU cap on one VM's QEMU: how replication throttles a guest that dirties memory
faster than its backups take it (agent/desired/throttle.py says how much).

QEMU 7.2's own CPU throttle only acts inside a migration (auto-converge), and its dirty
limit needs KVM's dirty ring; a cgroup CPU quota works for TCG and KVM alike. Where the VM
runs in a systemd scope (supervisor.py) the scope's `CPUQuota` is set; elsewhere the QEMU
process is moved into a cgroup of its own, `mycelium-vm-NAME`, under the cgroup v2 root
(`cpu.max`) or the v1 `cpu` hierarchy (`cpu.cfs_quota_us`). Level 0 lifts the cap. Where
none of these can be written, `set` raises OSError once and the VM runs unthrottled (its
status says so).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.desired.throttle import qemu_percent

PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor


def quota_us(cpus: int, level: float) -> int | None:
    """CPU time per PERIOD_US the VM may use at a throttle `level` (None: no cap). Like
    QEMU's cpu-throttle-percentage: at 99 % the vCPUs run 1 % of the time."""
    pct = qemu_percent(level)
    if pct == 0:
        return None
    return max(MIN_QUOTA_US, int(PERIOD_US * cpus * (100 - pct) / 100))


class CpuLimit:
    def __init__(self, name: str, cpus: int, *, root: Path = Path("/sys/fs/cgroup"),
                 scope: bool = False) -> None:
        self.name, self.cpus, self.root, self.scope = name, cpus, root, scope
        self.level = 0.0

    async def set(self, pid: int, level: float) -> None:
        """Cap QEMU `pid` at throttle `level` in [0, 1]; OSError when it cannot be."""
        quota = quota_us(self.cpus, level)
        if self.scope:
            await self._systemctl(quota)
        else:
            await asyncio.to_thread(self._cgroup, pid, quota)
        self.level = level

    async def _systemctl(self, quota: int | None) -> None:
        value = "" if quota is None else f"{quota * 100 // PERIOD_US}%"
        proc = await asyncio.create_subprocess_exec(
            "systemctl", "set-property", "--runtime", f"mycelium-vm-{self.name}.scope",
            f"CPUQuota={value}", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode:
            raise OSError(f"systemctl set-property CPUQuota: {err.decode().strip()}")

    def _cgroup(self, pid: int, quota: int | None) -> None:
        group = f"mycelium-vm-{self.name}"
        if (self.root / "cgroup.controllers").is_file():  # v2
            d = self.root / group
            d.mkdir(exist_ok=True)
            (d / "cgroup.procs").write_text(str(pid))
            (d / "cpu.max").write_text(f"{'max' if quota is None else quota} {PERIOD_US}")
            return
        d = self.root / "cpu" / group  # v1
        if not d.parent.is_dir():
            raise OSError(f"no cgroup cpu controller under {self.root}")
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(str(pid))
        (d / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (d / "cpu.cfs_quota_us").write_text(str(-1 if quota is None else quota))

    def close(self) -> None:
        """Remove the cgroup made for the VM (once its QEMU has exited)."""
        group = f"mycelium-vm-{self.name}"
        for d in (self.root / group, self.root / "cpu" / group):
            try:
                d.rmdir()
            except OSError:
                pass
