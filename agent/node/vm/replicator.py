"""The primary's side of VM memory replication: a checkpoint every interval, shipped to
each backup as the pages that changed.

Every `interval` seconds, while QEMU runs: `migrate` with the `background-snapshot`
capability to a file (the guest keeps running; the stream is the memory and device state
at the instant the migration started), parsed into a memory image (stream.py), diffed
page by page against the previous checkpoint's image, framed (checkpoint.py) and POSTed
to every backup at once over the node API's mutual TLS. A backup that has nothing, or
refused the last frame, or could not be reached gets a full frame next time; the others
get the incremental one. Checkpoints are sequential: the next one starts when every
backup answered (or timed out), so a slow link lengthens the interval rather than
piling up unsent frames. Measured figures: README "VM memory replication".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.desired.model import DesiredState, Endophyte, NodeShare
from agent.errors import MyceliumError
from agent.node.vm.checkpoint import changed_runs, encode
from agent.node.vm.qmp import Qmp, QmpError
from agent.node.vm.stream import Snapshot, StreamError, parse

log = logging.getLogger("mycelium.vm")

MIGRATE_POLL_S = 0.01
MIGRATE_DEADLINE_S = 60.0  # for one background snapshot to complete
SEND_DEADLINE_S = 60.0  # for one backup to take a frame (a full one can be large)

# send(backup address, VM name, frame) -> the backup's HTTP status (200 taken, 409 refused)
Send = Callable[[str, str, bytes], Awaitable[int]]


def _replicable(state: DesiredState | None) -> dict[str, Endophyte]:
    """Endophytes whose memory is replicated: with components.ram_replication on, backups,
    and no disk image (the disk is not replicated yet: memory resumed over a disk of
    another instant would corrupt the guest's file systems, so those VMs boot cold)."""
    if state is None or not state.components.vm_runtime \
            or not state.components.ram_replication:
        return {}
    return {e.name: e for e in state.endophytes if e.backups > 0 and not e.image}


def backed_up_vms(state: DesiredState | None, share: NodeShare | None) -> frozenset[str]:
    """The VMs whose memory this node receives, as a backup."""
    names = _replicable(state)
    return frozenset(n for n in share.endophytes_backup if n in names) if share else frozenset()


def replicated_vms(state: DesiredState | None, share: NodeShare | None) -> dict[str, float]:
    """VMs this node runs whose memory is replicated -> checkpoint interval in seconds."""
    vms = _replicable(state)
    return {n: vms[n].replication_interval_ms / 1000.0
            for n in (share.endophytes_primary if share else ()) if n in vms}


async def background_snapshot(qmp: Qmp, path: Path, armed: bool) -> None:
    """A consistent checkpoint of the running VM into `path` (QMP `migrate`)."""
    if not armed:
        await qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": True}]})
    await qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"})
    deadline = time.monotonic() + MIGRATE_DEADLINE_S
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            if status not in ("failed", "cancelled"):
                await qmp.execute("migrate_cancel")
            raise QmpError(f"checkpoint {status or 'no status'}: "
                           f"{info.get('error-desc', '') if isinstance(info, dict) else ''}")
        await asyncio.sleep(MIGRATE_POLL_S)


class Replicator:
    def __init__(self, name: str, interval_s: float, workdir: Path,
                 qmp: Callable[[], Qmp | None], backups: Callable[[], list[str]],
                 send: Send) -> None:
        self.name, self.interval, self.dir = name, interval_s, workdir
        self._qmp, self._backups, self._send = qmp, backups, send
        self.chain = secrets.token_hex(8)
        self.seq = 0
        self._prev: Snapshot | None = None
        self._armed: Qmp | None = None  # the QMP connection the capability was set on
        self._need_full: dict[str, bool] = {}
        self.acked: dict[str, int] = {}  # backup -> last seq it took
        self.last: dict[str, Any] = {}
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replicate-{self.name}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.once()
            except (MyceliumError, OSError) as e:  # QMP, stream, disk, peers: next time
                self.last_error = str(e)
                log.warning("vm %s: checkpoint: %s", self.name, e)
            except Exception:  # a bug must not end replication silently
                log.exception("vm %s: checkpoint", self.name)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - t0)))

    async def once(self) -> bool:
        """One checkpoint shipped to every backup (False when there was nothing to do)."""
        qmp, targets = self._qmp(), self._backups()
        if qmp is None or not targets or await qmp.status() != "running":
            return False
        t0, started = time.monotonic(), time.time()
        path = self.dir / "checkpoint.stream"
        await background_snapshot(qmp, path, self._armed is qmp)
        self._armed = qmp
        t1 = time.monotonic()
        try:
            snap = await asyncio.to_thread(lambda: parse(path.read_bytes()))
        except StreamError as e:  # never guess: the next one will be full for everyone
            self._prev = None
            raise MyceliumError(f"checkpoint stream: {e}") from e
        finally:
            path.unlink(missing_ok=True)
        self.seq += 1
        prev, seq = self._prev, self.seq
        runs = (await asyncio.to_thread(changed_runs, prev.image, snap.image)
                if prev is not None and prev.size == snap.size else None)
        frames: dict[bool, bytes] = {}

        async def frame(full: bool) -> bytes:
            if full not in frames:
                frames[full] = await asyncio.to_thread(
                    encode, self.name, self.chain, seq, 0 if full else seq - 1, snap,
                    None if full else prev.image if prev else None,
                    None if full else runs)
            return frames[full]

        t2 = time.monotonic()
        plan = {a: runs is None or self._need_full.get(a, True) for a in targets}
        for full in set(plan.values()):
            await frame(full)
        t3 = time.monotonic()
        results = await asyncio.gather(*(self._ship(a, frames[f], seq) for a, f in plan.items()))
        self._prev = snap
        wire = sum(len(frames[f]) for f in plan.values())
        self.last = {"seq": seq, "started": started, "at": time.time(),
                     "cycle_s": round(time.monotonic() - t0, 3), "image_bytes": snap.size,
                     "dirtied_bytes": None if runs is None else sum(n for _, n in runs),
                     "wire_bytes": wire, "full": any(plan.values()),
                     "snapshot_s": round(t1 - t0, 3), "parse_diff_s": round(t2 - t1, 3),
                     "encode_s": round(t3 - t2, 3),
                     "send_s": round(time.monotonic() - t3, 3), "taken": sum(results)}
        log.info("vm %s: checkpoint %d: %s dirtied, %d bytes sent to %d/%d backups",
                 self.name, seq, "all" if runs is None else f"{self.last['dirtied_bytes']} B",
                 wire, sum(results), len(plan))
        return True

    async def _ship(self, addr: str, frame: bytes, seq: int) -> bool:
        try:
            status = await asyncio.wait_for(self._send(addr, self.name, frame),
                                            SEND_DEADLINE_S)
        except (MyceliumError, OSError, TimeoutError) as e:
            log.warning("vm %s: checkpoint %d to %s: %s", self.name, seq, addr, e)
            status = 0
        self._need_full[addr] = status != 200
        if status == 200:
            self.acked[addr] = seq
        return status == 200

    def status(self) -> dict[str, Any]:
        return {"seq": self.seq, "chain": self.chain, "last": self.last,
                "acked": dict(self.acked), "error": self.last_error}
