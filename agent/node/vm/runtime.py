"""All VMs this node runs: started and stopped from the placement, status per VM.

`apply(wanted)` is called with the VMs this node is primary for (name -> VmSpec) whenever
the state, the placement or the membership may have changed; it is idempotent. A VM not
wanted any more is stopped cleanly (its overlay and serial log stay in data dir/vms/NAME:
a move back finds them, and issue 15 will ship them). A VM whose spec changed is stopped
and started again with the new one, never both at once. A failed VM stays failed (with
its reason) until its spec changes or it leaves this node and comes back.

VM memory replication (README "VM memory replication"): a VM placed here with an
interval in `replicate` gets a Replicator that ships checkpoints to `targets(name)`; a VM
in `backups` gets a ReplicaStore that takes them (`offer`). When a VM this node backed up
is placed here, its QEMU resumes from the store's last good checkpoint instead of booting
cold: from the store kept in memory while it was a backup, or from disk after a restart
when the checkpoint is under RESUME_MAX_AGE_S old (an older one is not the VM's memory
any more, someone else ran it since) and no copy was launched here after it (a spec
change or an agent restart on the node the VM moved to must not roll it back).

The runtime is an async context manager: leaving it stops every VM (the agent is
stopping; its VMs would be orphans otherwise).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.node.vm.accel import accel_reason, choose_accel
from agent.node.vm.checkpoint import Held
from agent.node.vm.cpulimit import CpuLimit
from agent.node.vm.policy import DEFAULT_POLICY, Policy, after_handoff
from agent.node.vm.replica import ReplicaStore
from agent.node.vm.replicator import Replication, Replicator, Send
from agent.node.vm.spec import VmPaths, VmSpec
from agent.node.vm.supervisor import (
    STOP_DEADLINE_S,
    ResumeDisk,
    VmSupervisor,
    systemd_scopes,
)

log = logging.getLogger("mycelium.vm")

SUMMARY_MAX = 16  # VMs named in the gossip meta
RESUME_MAX_AGE_S = 600.0  # a checkpoint on disk older than this is not resumed from
HANDOFF_POLL_S = 0.1  # how often a moved guest's old primary looks for it running elsewhere


@dataclass(frozen=True)
class Handoff:
    """A guest paused here after the final checkpoint of a planned move to node `to`."""

    to: str
    since: float  # monotonic


async def _no_send(addr: str, name: str, frame: bytes) -> int:
    return 0


class VmRuntime:
    def __init__(self, data_dir: Path, *, policy: Policy = DEFAULT_POLICY,
                 stop_deadline: float = STOP_DEADLINE_S, qemu: str = "qemu-system-x86_64",
                 on_change: Callable[[], None] = lambda: None,
                 send: Send = _no_send,
                 targets: Callable[[str], list[str]] = lambda _: [],
                 runs_on: Callable[[str, str], bool] = lambda vm, node: False,
                 majority: Callable[[], bool] = lambda: False) -> None:
        """`runs_on(vm, node)`: gossip says node runs vm; `majority`: the Primary's
        majority is in reach (both for planned moves: README "VM memory replication")."""
        self.root = data_dir / "vms"
        self.replica_root = data_dir / "vm-replicas"
        self.send, self.targets = send, targets
        self.runs_on, self.majority = runs_on, majority
        self.handoffs: dict[str, Handoff] = {}
        self.replicas: dict[str, ReplicaStore] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self.replicators: dict[str, Replicator] = {}
        self._caps: dict[str, CpuLimit] = {}  # the CPU caps replication made, per VM
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
        await asyncio.gather(*self._stopping.values(), *self._loading.values(),
                             return_exceptions=True)

    def paths(self, name: str) -> VmPaths:
        return VmPaths(self.root / name)

    def apply(self, wanted: dict[str, VmSpec], backups: frozenset[str] = frozenset(),
              replicate: dict[str, Replication] | None = None) -> None:
        """`wanted`: VMs to run here; `backups`: VMs whose checkpoints this node takes;
        `replicate`: how the wanted VMs that have backups are replicated."""
        if self._closed:
            return
        replicate = replicate or {}
        for name in [n for n, sup in self.vms.items()
                     if n not in wanted or sup.spec != wanted[n]]:
            self._stop(name)
        for name, spec in wanted.items():
            if name not in self.vms:
                sup = VmSupervisor(spec, self.paths(name), self.cache, policy=self.policy,
                                   stop_deadline=self.stop_deadline, qemu=self.qemu,
                                   accel=self.accel, on_change=self.on_change,
                                   resume=self._resumer(name, self.replicas.get(name)),
                                   resume_disk=self._disk_resumer(name,
                                                                  self.replicas.get(name)))
                self.vms[name] = sup
                sup.start(after=self._stopping.get(name))
            self._replicate(name, replicate.get(name))
            self._after_handoff(name)
        for name in set(self.replicas) - backups:
            del self.replicas[name]  # its files stay: a move here resumes from them
        for name in backups - set(self.replicas) - set(self._loading) - set(wanted):
            self._loading[name] = asyncio.create_task(self._load_replica(name))

    async def _load_replica(self, name: str) -> None:
        """A backup's store, read from its files off the event loop (a chain of frames
        to verify and apply: a second or more); checkpoints offered meanwhile get 404
        and the primary sends a full one next time."""
        try:
            store = await asyncio.to_thread(ReplicaStore, self.replica_root, name)
        except OSError as e:  # tried again at the next apply
            log.warning("vm %s: cannot keep its checkpoints here: %s", name, e)
            return
        finally:
            del self._loading[name]
        if not self._closed:
            self.replicas[name] = store

    def _resumer(self, name: str, store: ReplicaStore | None) -> Callable[[Path], int | None]:
        def resume(path: Path) -> int | None:
            s = self._store_for(name, store)
            return None if s is None else s.resume_stream(path)
        return resume

    def _disk_resumer(self, name: str, store: ReplicaStore | None) -> ResumeDisk:
        def resume(stream: Path, disk: Path, base: Path, fmt: str) -> int | None:
            s = self._store_for(name, store)
            return None if s is None else s.resume(stream, disk, base, fmt)
        return resume

    def _store_for(self, name: str, store: ReplicaStore | None) -> ReplicaStore | None:
        """The checkpoints to resume VM `name` from: those held as its backup, else those
        on disk when recent enough."""
        if store is None and (self.replica_root / name).is_dir():
            store = ReplicaStore(self.replica_root, name)
            if store.taken_at is None or time.time() - store.taken_at > RESUME_MAX_AGE_S \
                    or self._ran_since(name, store.taken_at):
                return None
        return store

    def _ran_since(self, name: str, t: float) -> bool:
        """A copy of VM `name` was launched here after wall time `t` (each launch makes
        its stderr file anew): a checkpoint taken before it would roll the guest back."""
        try:
            return self.paths(name).stderr.stat().st_mtime >= t
        except OSError:
            return False

    def _replicate(self, name: str, how: Replication | None) -> None:
        """Start or stop the Replicator of VM `name` (None: it has no backups)."""
        rep = self.replicators.get(name)
        if rep is not None and (how is None or (rep.interval, rep.throttle) != (
                how.interval_s, how.throttle)):
            self._end_replication(name)
            rep = None
        if rep is None and how is not None:
            sup = self.vms[name]
            cap = self._caps[name] = CpuLimit(name, sup.spec.cpus, scope=systemd_scopes())

            async def limit(level: float) -> None:
                if sup.pid is not None:
                    await cap.set(sup.pid, level)

            rep = Replicator(name, how.interval_s, sup.paths.dir, lambda: sup.qmp,
                             lambda: self.targets(name), self.send, throttle=how.throttle,
                             limit=limit)
            self.replicators[name] = rep
            rep.start()

    def _end_replication(self, name: str) -> None:
        rep = self.replicators.pop(name, None)
        if rep is not None:
            rep.stop()

    async def hand_off(self, name: str, to: str, addr: str) -> dict[str, Any]:
        """The final checkpoint of a planned move of VM `name` to node `to` (API address
        `addr`, one of its backups): shipped and taken, the guest left paused here."""
        rep = self.replicators.get(name)
        if rep is None or name not in self.vms:
            raise LookupError(f"VM {name} is not run and replicated here")
        if name in self.handoffs:
            raise ValueError(f"VM {name} is already paused for a move to "
                             f"{self.handoffs[name].to}")
        if addr not in self.targets(name):
            raise ValueError(f"node {to} is not a live backup of VM {name} here yet")
        out = await rep.final(addr)
        self.handoffs[name] = Handoff(to, time.monotonic())
        return out

    async def thaw(self, name: str) -> None:
        """The planned move of VM `name` was refused: its guest runs on here."""
        self.handoffs.pop(name, None)
        rep = self.replicators.get(name)
        if rep is not None:
            await rep.thaw()

    def _after_handoff(self, name: str) -> None:
        """A guest paused for a move that is still placed here (policy.after_handoff)."""
        h = self.handoffs.get(name)
        if h is not None and after_handoff(True, self.runs_on(name, h.to), self.majority(),
                                           time.monotonic() - h.since) == "resume":
            log.warning("vm %s: its move to %s was not committed: resuming it here",
                        name, h.to)
            del self.handoffs[name]
            if (rep := self.replicators.get(name)) is not None:
                asyncio.get_running_loop().create_task(rep.thaw())

    async def _moved_away(self, name: str, h: Handoff, sup: VmSupervisor) -> None:
        """Keep the paused guest until its new primary runs it, then quit (not ACPI)."""
        while not self._closed and after_handoff(
                False, self.runs_on(name, h.to), self.majority(),
                time.monotonic() - h.since) == "wait":
            await asyncio.sleep(HANDOFF_POLL_S)
        sup.quit_on_stop = True

    def offer(self, name: str, frame: bytes) -> Held | None:
        """A checkpoint of VM `name` from its primary: LookupError if this node is not
        its backup, FrameError if the frame is refused (the last good one is kept)."""
        store = self.replicas.get(name)
        if store is None:
            raise LookupError(f"this node is not a backup of VM {name}")
        return store.offer(frame)

    def _stop(self, name: str) -> None:
        self._end_replication(name)
        sup = self.vms.pop(name)
        before = self._stopping.get(name)
        handoff = self.handoffs.pop(name, None)

        async def stop() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            if handoff is not None and not self._closed:
                await self._moved_away(name, handoff, sup)
            await sup.stop()
            if (cap := self._caps.pop(name, None)) is not None:
                cap.close()
            if self._stopping.get(name) is task:
                del self._stopping[name]
            self.on_change()

        task = asyncio.create_task(stop(), name=f"vm-stop-{name}")
        self._stopping[name] = task

    def status(self) -> list[dict[str, Any]]:
        """One record per VM supervised here, by name (those still stopping included)."""
        out = {n: {**sup.status(), "accel_reason": accel_reason(self.qemu) if sup.accel
                   else ""} for n, sup in self.vms.items()}
        now = time.time()
        for n, rep in self.replicators.items():
            if n in out:
                r = out[n]["replication"] = rep.status()
                started = r["last"].get("started")
                r["lag_s"] = None if started is None else round(now - started, 1)
                if n in self.handoffs:
                    out[n]["reason"] = f"paused for its move to {self.handoffs[n].to}"
        for n in self._stopping:
            out.setdefault(n, {"name": n, "state": "stopping", "reason": "moved or deleted"})
        return [out[n] for n in sorted(out)]

    def backup_status(self) -> list[dict[str, Any]]:
        """The checkpoints this node holds as a backup, one record per VM."""
        return [self.replicas[n].status() for n in sorted(self.replicas)]

    def checkpoints(self) -> dict[str, float]:
        """VM -> when the newest checkpoint held here as its backup arrived (wall clock):
        gossiped, so the leader resumes a dead primary's VM on the newest backup."""
        return {n: round(s.taken_at, 1) for n, s in self.replicas.items()
                if s.taken_at is not None}

    def replication_meta(self) -> dict[str, list[int]]:
        """VM -> [buffer fill %, throttle %, wall second its newest checkpoint started]
        for each VM replicated from here: gossiped (a few bytes per VM, SUMMARY_MAX VMs at
        most), so `mycelium status --shares` shows the lag without asking the primary."""
        out = {}
        for n, rep in list(self.replicators.items())[:SUMMARY_MAX]:
            out[n] = [round(rep.fill() * 100), round(rep.level * 100),
                      int(rep.last.get("started") or 0)]
        return out

    def summary(self) -> dict[str, str]:
        """name -> state, small enough for every gossip message: past SUMMARY_MAX VMs,
        the first ones and a count of the rest (the API has them all)."""
        states = {s["name"]: s["state"] for s in self.status()}
        if len(states) <= SUMMARY_MAX:
            return states
        kept = dict(list(states.items())[:SUMMARY_MAX - 1])
        return {**kept, "...": f"{len(states) - len(kept)} more"}
