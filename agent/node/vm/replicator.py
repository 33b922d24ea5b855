"""The primary's side of VM memory replication: a checkpoint every interval, shipped to
each backup as the pages that changed.

Every `interval` seconds, while QEMU runs: `migrate` with the `background-snapshot`
capability to a file (the guest keeps running; the stream is the memory and device state
at the instant the migration started), parsed into a memory image (stream.py), diffed
page by page against the previous checkpoint's image, framed (checkpoint.py) and POSTed
to every backup at once over the node API's mutual TLS. A backup that has nothing, or
refused the last frame, or could not be reached gets a full frame next time; the others
get the incremental one.

Frames wait in a buffer per backup (Outbox), sent in order by one task per backup, so a
slow backup never delays the checkpoints. The fullest buffer drives the guest's speed
(agent/desired/throttle.py): past `throttle.threshold` its CPU is capped along the curve
(cpulimit.py); a checkpoint that does not fit pauses the VM (`emergency_pause`, resumed
when the buffer is back under the threshold) or empties that backup's buffer and goes
full (a dropped frame breaks the chain). Measured figures: README "VM memory replication".

A VM with a disk is paused for the instant of each checkpoint instead, and its disk is
cut in the same pause (diskckpt.py): the frame carries the clusters written since the
last checkpoint beside the pages.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.desired.model import DesiredState, Endophyte, NodeShare, Throttle
from agent.desired.throttle import level, next_step
from agent.errors import MyceliumError
from agent.node.vm import diskckpt
from agent.node.vm.checkpoint import changed_runs, encode, page_runs, split
from agent.node.vm.qmp import Qmp, QmpError
from agent.node.vm.stream import Snapshot, StreamError, parse

log = logging.getLogger("mycelium.vm")

MIGRATE_POLL_S = 0.01
MIGRATE_DEADLINE_S = 60.0  # for one background snapshot to complete
SEND_DEADLINE_S = 60.0  # for one backup to take a frame (a full one can be large)

BUFFER_MIN = 16 << 20  # bytes of unsent frames per backup, at least...
BUFFER_OF_IMAGE = 0.5  # ...or this share of the guest's memory (a full frame fits)
LEVEL_STEP = 0.05  # throttle changes smaller than this are not applied
FINAL_BANDWIDTH = 1 << 40  # bytes/s: the final checkpoint of a move is not rate-limited
CONNECTIONS = 4  # parallel requests a large frame is split over, per backup
PART_MIN = 1 << 20  # frames under this go whole
DEFAULT_THROTTLE = Throttle()

# send(backup address, VM name, frame) -> the backup's HTTP status (200 taken, 409 refused)
Send = Callable[[str, str, bytes], Awaitable[int]]
# limit(level in [0, 1]): cap the VM's CPU (cpulimit.py); OSError if it cannot
Limit = Callable[[float], Awaitable[None]]


def _replicable(state: DesiredState | None) -> dict[str, Endophyte]:
    """Endophytes whose memory (and disk) is replicated: with components.ram_replication
    on, and backups."""
    if state is None or not state.components.vm_runtime \
            or not state.components.ram_replication:
        return {}
    return {e.name: e for e in state.endophytes if e.backups > 0}


def replicable_vms(state: DesiredState | None) -> frozenset[str]:
    """The VMs whose memory is replicated (a planned move is offered for those only)."""
    return frozenset(_replicable(state))


def backed_up_vms(state: DesiredState | None, share: NodeShare | None) -> frozenset[str]:
    """The VMs whose memory this node receives, as a backup."""
    names = _replicable(state)
    return frozenset(n for n in share.endophytes_backup if n in names) if share else frozenset()


@dataclass(frozen=True)
class Replication:
    interval_s: float
    throttle: Throttle


def replicated_vms(state: DesiredState | None,
                   share: NodeShare | None) -> dict[str, Replication]:
    """VMs this node runs whose memory is replicated, with their interval and throttle."""
    vms = _replicable(state)
    return {n: Replication(vms[n].replication_interval_ms / 1000.0, vms[n].throttle)
            for n in (share.endophytes_primary if share else ()) if n in vms}


async def background_snapshot(qmp: Qmp, path: Path, armed: bool) -> None:
    """A consistent checkpoint of the running VM into `path` (QMP `migrate`)."""
    await start_snapshot(qmp, path, armed)
    await snapshot_done(qmp)


async def start_snapshot(qmp: Qmp, path: Path, armed: bool) -> None:
    if not armed:
        await qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": True}]})
    await qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"})


async def snapshot_done(qmp: Qmp) -> None:
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


class Outbox:
    """Frames queued for one backup, oldest first, with their bytes, and the task that
    sends them in order."""

    def __init__(self) -> None:
        self.frames: deque[tuple[int, bytes]] = deque()
        self.bytes = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def put(self, seq: int, frame: bytes) -> None:
        self.frames.append((seq, frame))
        self.bytes += len(frame)
        self.wake.set()

    def clear(self) -> int:
        n = len(self.frames)
        self.frames.clear()
        self.bytes = 0
        return n


class Replicator:
    def __init__(self, name: str, interval_s: float, workdir: Path,
                 qmp: Callable[[], Qmp | None], backups: Callable[[], list[str]],
                 send: Send, *, throttle: Throttle = DEFAULT_THROTTLE,
                 limit: Limit | None = None, buffer: int | None = None,
                 connections: int = CONNECTIONS) -> None:
        self.name, self.interval, self.dir = name, interval_s, workdir
        self._qmp, self._backups, self._send = qmp, backups, send
        self.throttle, self._limit = throttle, limit
        self.chain = secrets.token_hex(8)
        self.seq = 0
        self._prev: Snapshot | None = None
        self._armed: Qmp | None = None  # the QMP connection the capability was set on
        self._need_full: dict[str, bool] = {}
        self._boxes: dict[str, Outbox] = {}
        self._buffer = buffer  # bytes per backup; None: from the guest's size
        self.connections = connections
        self.capacity = buffer or BUFFER_MIN
        self.level = 0.0
        self.paused = False  # by us, at a full buffer (throttle.emergency_pause)
        self.dropped = 0
        self.limit_error = ""
        self.acked: dict[str, int] = {}  # backup -> last seq it took
        self.last: dict[str, Any] = {}
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None
        self._cycle = asyncio.Lock()  # one checkpoint at a time (periodic or final)
        self.frozen = False  # after a final checkpoint: the guest waits for its move

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replicate-{self.name}")

    def stop(self) -> None:
        for t in [self._task, *(b.task for b in self._boxes.values())]:
            if t is not None:
                t.cancel()

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                async with self._cycle:
                    await self.once()
            except (MyceliumError, OSError) as e:  # QMP, stream, disk, peers: next time
                self.last_error = str(e)
                log.warning("vm %s: checkpoint: %s", self.name, e)
            except Exception:  # a bug must not end replication silently
                log.exception("vm %s: checkpoint", self.name)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - t0)))

    async def once(self) -> bool:
        """One checkpoint queued for every backup (False when there was nothing to do)."""
        qmp, targets = self._qmp(), self._backups()
        for addr in set(self._boxes) - set(targets):  # no longer a backup
            box = self._boxes.pop(addr)
            if box.task is not None:
                box.task.cancel()
        if qmp is None or self.frozen:
            return False
        await self._regulate(qmp)
        if not targets or self.paused or await qmp.status() != "running":
            return False
        t0, started = time.monotonic(), time.time()
        path = self.dir / "checkpoint.stream"
        cut = await self._snapshot(qmp, path)
        t1 = time.monotonic()
        # parsed into the previous image, which becomes this one: the changed pages are
        # found on the way (no second image, no separate diff)
        image = self._prev.image if self._prev is not None else None
        pages: list[int] = []
        try:
            snap = await asyncio.to_thread(lambda: parse(path.read_bytes(), image, pages))
        except StreamError as e:  # never guess: the next one will be full for everyone
            self._prev = None  # (and its image is half written)
            raise MyceliumError(f"checkpoint stream: {e}") from e
        finally:
            path.unlink(missing_ok=True)
        t2 = time.monotonic()
        await self.ship(snap, targets, qmp,
                        changed=page_runs(pages) if snap.image is image else None, disk=cut)
        if cut is not None:
            self.last.update(pause_s=round(cut.pause_s, 3),
                             disk_bytes=cut.inc.bytes if cut.inc else 0)
        self.last.update(started=started, snapshot_s=round(t1 - t0, 3),
                         parse_s=round(t2 - t1, 3),
                         cycle_s=round(time.monotonic() - t0, 3))
        if cut is not None:  # the closed layer into the overlay, the VM running meanwhile
            t3 = time.monotonic()
            await diskckpt.fold(qmp, cut)
            self.last["fold_s"] = round(time.monotonic() - t3, 3)
        return True

    async def _snapshot(self, qmp: Qmp, path: Path) -> diskckpt.Cut | None:
        """The memory snapshot into `path`; for a VM with a disk, taken in a pause with
        the disk cut at the same instant, and the disk's closed layer read."""
        armed = self._armed is qmp
        disk = await diskckpt.disk_of(qmp)
        if disk is None:
            await background_snapshot(qmp, path, armed)
            self._armed = qmp
            return None
        try:
            cut = await diskckpt.cut(qmp, disk, self.dir, f"{self.chain}-{self.seq + 1}",
                                     lambda: start_snapshot(qmp, path, armed))
            await snapshot_done(qmp)
            self._armed = qmp
            cut.inc = await asyncio.to_thread(diskckpt.read_part, cut.closed, False)
        except BaseException:  # a layer may be closed that no backup got: go full next
            self._prev = None
            raise
        return cut

    async def ship(self, snap: Snapshot, targets: list[str], qmp: Qmp | None = None,
                   changed: list[tuple[int, int]] | None = None,
                   disk: diskckpt.Cut | None = None) -> None:
        """Frame `snap` for each backup and queue it, along the buffer policy. `changed`:
        its runs of pages that differ from the previous checkpoint, when the caller found
        them (then `snap.image` may be the previous image, patched); else they are
        computed against the previous image. `disk`: the disk cut at the same instant."""
        self.seq += 1
        prev, seq = self._prev, self.seq
        self.capacity = self._buffer or max(BUFFER_MIN, int(snap.size * BUFFER_OF_IMAGE))
        t0 = time.monotonic()
        if prev is None or prev.size != snap.size:
            runs = None  # full frames only
        elif changed is not None:
            runs = changed
        else:
            runs = await asyncio.to_thread(changed_runs, prev.image, snap.image)
        frames: dict[bool, bytes] = {}

        async def frame(full: bool) -> bytes:
            full = full or runs is None or prev is None
            if full not in frames:
                part = None if disk is None else \
                    await asyncio.to_thread(disk.full) if full else disk.inc
                frames[full] = await asyncio.to_thread(
                    encode, self.name, self.chain, seq, 0 if full else seq - 1, snap,
                    None if full else prev.image if prev else None,
                    None if full else runs, part)
            return frames[full]

        t1 = time.monotonic()
        pause, wire, fulls = False, 0, 0
        for addr in targets:
            box = self._box(addr)
            f = await frame(self._need_full.get(addr, True))
            step = next_step(self.throttle, box.bytes, self.capacity, len(f))
            if step.action == "drop_oldest":  # the chain is broken: this one goes full
                self.dropped += box.clear()
                f = await frame(True)
            elif step.action == "pause":
                pause = True
            self._need_full[addr] = False  # what is queued after this one continues it
            fulls += f is frames.get(True)
            wire += len(f)
            box.put(seq, f)
        self._prev = snap
        self.last = {"seq": seq, "at": time.time(), "image_bytes": snap.size,
                     "dirtied_bytes": None if runs is None else sum(n for _, n in runs),
                     "wire_bytes": wire, "full": fulls > 0,
                     "diff_s": round(t1 - t0, 3),
                     "encode_s": round(time.monotonic() - t1, 3)}
        log.info("vm %s: checkpoint %d: %s dirtied, %d bytes queued for %d backups",
                 self.name, seq, "all" if runs is None else f"{self.last['dirtied_bytes']} B",
                 wire, len(targets))
        if qmp is not None:
            await self._regulate(qmp, pause)

    async def final(self, target: str) -> dict[str, Any]:
        """The last checkpoint before a planned move to backup `target`: a plain `migrate`
        (no background snapshot), after which QEMU leaves the guest paused, shipped as
        the next frame; returns once `target` took it, with the guest still paused (the
        caller commits the move, or `thaw`s). On a failure the guest runs on."""
        async with self._cycle:
            qmp = self._qmp()
            if qmp is None or self.paused or await qmp.status() != "running":
                raise MyceliumError(f"VM {self.name} is not running here (or is paused by "
                                    "its checkpoint buffer); try again")
            self.frozen, started, t0 = True, time.time(), time.monotonic()
            try:
                return await self._final(qmp, target, started, t0)
            except BaseException:
                await self.thaw()
                raise

    async def _final(self, qmp: Qmp, target: str, started: float,
                     t0: float) -> dict[str, Any]:
        await qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": False}]})
        self._armed = None  # the next periodic checkpoint arms it again
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": FINAL_BANDWIDTH})
        path = self.dir / "checkpoint.stream"
        await background_snapshot(qmp, path, True)  # armed=True: the capability stays off
        t1 = time.monotonic()
        info = await qmp.execute("query-migrate")
        total, down = (info.get("total-time"), info.get("downtime")) \
            if isinstance(info, dict) else (None, None)
        # the guest ran during the precopy passes and stopped for the last one
        stopped = started + (max(0, total - down) / 1000 if isinstance(total, int)
                             and isinstance(down, int) else 0.0)
        image = self._prev.image if self._prev is not None else None
        pages: list[int] = []
        try:
            snap = await asyncio.to_thread(lambda: parse(path.read_bytes(), image, pages))
        except StreamError as e:
            self._prev = None
            raise MyceliumError(f"final checkpoint stream: {e}") from e
        finally:
            path.unlink(missing_ok=True)
        # to the target only: the other backups' chains end here (the new primary starts
        # its own), and a full frame one of them needs would lengthen the pause; should
        # the move fail, they get a full one next
        for addr in self._backups():
            if addr != target:
                self._need_full[addr] = True
        # a precopy stream sends a page again each pass it was dirtied in
        await self.ship(snap, [target], None,
                        changed=page_runs(sorted(set(pages))) if snap.image is image else None)
        self.last.update(started=started, snapshot_s=round(t1 - t0, 3))
        seq, deadline = self.seq, time.monotonic() + SEND_DEADLINE_S
        while self.acked.get(target, 0) < seq:
            if time.monotonic() > deadline or target not in self._boxes \
                    or self._need_full.get(target):  # its send failed
                raise MyceliumError(f"backup {target} did not take the final checkpoint "
                                    f"{seq}")
            await asyncio.sleep(MIGRATE_POLL_S)
        return {"seq": seq, "started": started, "stopped": stopped,
                "migrate_s": round(t1 - t0, 3),
                "taken_s": round(time.monotonic() - t0, 3),
                "wire_bytes": self.last.get("wire_bytes")}

    async def thaw(self) -> None:
        """The move did not happen: the guest runs on from where it paused."""
        qmp = self._qmp()
        try:
            if qmp is not None and await qmp.status() in ("postmigrate", "paused") \
                    and not self.paused:
                await qmp.execute("cont")
        finally:
            self.frozen = False

    def fill(self) -> float:
        """The fullest backup's buffer, as a fraction of the capacity."""
        return max((b.bytes for b in self._boxes.values()), default=0) / self.capacity

    async def _regulate(self, qmp: Qmp, pause: bool = False) -> None:
        """Throttle, pause or resume the VM for the buffer's fill."""
        fill = self.fill()
        if pause and not self.paused:
            await qmp.execute("stop")
            self.paused = True
            log.warning("vm %s: paused: checkpoint buffer full (emergency_pause)", self.name)
        elif self.paused and fill <= self.throttle.threshold:
            await qmp.execute("cont")
            self.paused = False
            log.info("vm %s: resumed: checkpoint buffer at %d %%", self.name, fill * 100)
        want = level(self.throttle, fill)
        if abs(want - self.level) < LEVEL_STEP and (want == 0.0) == (self.level == 0.0):
            return
        if self._limit is not None:
            try:
                await self._limit(want)
            except OSError as e:  # no cgroup to write: say so once, run unthrottled
                self.limit_error = f"cannot throttle the VM: {e}"
                log.warning("vm %s: %s", self.name, self.limit_error)
                self._limit = None
        self.level = want

    def _box(self, addr: str) -> Outbox:
        box = self._boxes.get(addr)
        if box is None:
            box = self._boxes[addr] = Outbox()
            box.task = asyncio.create_task(self._drain(addr, box),
                                           name=f"replicate-{self.name}-{addr}")
        return box

    async def _drain(self, addr: str, box: Outbox) -> None:
        """Send `addr` its frames in order; on a failure drop what is queued (it cannot
        be applied without the one that failed) and send the next checkpoint full."""
        while True:
            await box.wake.wait()
            box.wake.clear()
            while box.frames:
                seq, frame = box.frames[0]
                ok = await self._post(addr, frame, seq)
                if box.frames and box.frames[0][0] == seq:
                    box.frames.popleft()
                    box.bytes -= len(frame)
                if not ok:
                    self.dropped += box.clear()
                    self._need_full[addr] = True

    async def _post(self, addr: str, frame: bytes, seq: int) -> bool:
        """Send one frame, split over `self.connections` parallel requests when large:
        True when the backup took it."""
        n = self.connections if len(frame) >= PART_MIN else 1
        bodies = [frame] if n == 1 else split(frame, n, secrets.token_bytes(16))
        try:
            statuses = await asyncio.wait_for(asyncio.gather(
                *(self._send(addr, self.name, b) for b in bodies)), SEND_DEADLINE_S)
        except (MyceliumError, OSError, TimeoutError) as e:
            log.warning("vm %s: checkpoint %d to %s: %s", self.name, seq, addr, e)
            statuses = [0]
        # one part completes the frame (200 or 409); the others were kept (202)
        status = next((s for s in statuses if s != 202), 0)
        if status == 200:
            self.acked[addr] = seq
        return status == 200

    def status(self) -> dict[str, Any]:
        return {"seq": self.seq, "chain": self.chain, "last": self.last,
                "acked": dict(self.acked), "error": self.last_error,
                "buffer_bytes": max((b.bytes for b in self._boxes.values()), default=0),
                "buffer_capacity": self.capacity, "buffer_fill": round(self.fill(), 3),
                "throttle": round(self.level, 3), "paused": self.paused,
                "dropped": self.dropped, "limit_error": self.limit_error}
