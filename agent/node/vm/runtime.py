"""All VMs this node runs: started and stopped from the placement, status per VM.

`apply(wanted)` is called with the VMs this node is primary for (name -> VmSpec) whenever
the state, the placement or the membership may have changed; it is idempotent. A VM not
wanted any more is stopped cleanly (its overlay and serial log stay in data dir/vms/NAME:
a move back finds them, and issue 15 will ship them). A VM whose spec changed is stopped
and started again with the new one, never both at once. A failed VM stays failed (with
its reason) until its spec changes or it leaves this node and comes back.

The runtime is an async context manager: leaving it stops every VM (the agent is
stopping; its VMs would be orphans otherwise).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.node.vm.accel import accel_reason, choose_accel
from agent.node.vm.policy import DEFAULT_POLICY, Policy
from agent.node.vm.spec import VmPaths, VmSpec
from agent.node.vm.supervisor import STOP_DEADLINE_S, VmSupervisor

SUMMARY_MAX = 16  # VMs named in the gossip meta


class VmRuntime:
    def __init__(self, data_dir: Path, *, policy: Policy = DEFAULT_POLICY,
                 stop_deadline: float = STOP_DEADLINE_S, qemu: str = "qemu-system-x86_64",
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.root = data_dir / "vms"
        self.cache = data_dir / "vm-images"
        self.accel = functools.partial(choose_accel, cache=data_dir / "vm-accel.json")
        self.policy, self.stop_deadline, self.qemu = policy, stop_deadline, qemu
        self.on_change = on_change
        self.vms: dict[str, VmSupervisor] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._closed = False  # after exit nothing starts (the agent is shutting down)

    async def __aenter__(self) -> VmRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.apply({})
        self._closed = True
        await asyncio.gather(*self._stopping.values(), return_exceptions=True)

    def paths(self, name: str) -> VmPaths:
        return VmPaths(self.root / name)

    def apply(self, wanted: dict[str, VmSpec]) -> None:
        if self._closed:
            return
        for name in [n for n, sup in self.vms.items()
                     if n not in wanted or sup.spec != wanted[n]]:
            self._stop(name)
        for name, spec in wanted.items():
            if name not in self.vms:
                sup = VmSupervisor(spec, self.paths(name), self.cache, policy=self.policy,
                                   stop_deadline=self.stop_deadline, qemu=self.qemu,
                                   accel=self.accel, on_change=self.on_change)
                self.vms[name] = sup
                sup.start(after=self._stopping.get(name))

    def _stop(self, name: str) -> None:
        sup = self.vms.pop(name)
        before = self._stopping.get(name)

        async def stop() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await sup.stop()
            if self._stopping.get(name) is task:
                del self._stopping[name]
            self.on_change()

        task = asyncio.create_task(stop(), name=f"vm-stop-{name}")
        self._stopping[name] = task

    def status(self) -> list[dict[str, Any]]:
        """One record per VM supervised here, by name (those still stopping included)."""
        out = {n: {**sup.status(), "accel_reason": accel_reason(self.qemu) if sup.accel
                   else ""} for n, sup in self.vms.items()}
        for n in self._stopping:
            out.setdefault(n, {"name": n, "state": "stopping", "reason": "moved or deleted"})
        return [out[n] for n in sorted(out)]

    def summary(self) -> dict[str, str]:
        """name -> state, small enough for every gossip message: past SUMMARY_MAX VMs,
        the first ones and a count of the rest (the API has them all)."""
        states = {s["name"]: s["state"] for s in self.status()}
        if len(states) <= SUMMARY_MAX:
            return states
        kept = dict(list(states.items())[:SUMMARY_MAX - 1])
        return {**kept, "...": f"{len(states) - len(kept)} more"}
