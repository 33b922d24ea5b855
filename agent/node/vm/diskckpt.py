"""The primary's side of disk replication: the disk cut in the same pause as the memory.

A VM with a disk runs on a chain of qcow2 files: its base image (never written), its own
overlay (node `vmdisk`: overlay.qcow2, or resume.qcow2 after a takeover), and on top the
layer the current checkpoint interval writes to. Each checkpoint (`cut`):
  `stop`; a QMP `transaction` with `blockdev-snapshot-sync` puts a new layer on top, so
  the layer below it is closed and holds exactly the writes since the last checkpoint;
  the background-snapshot migration starts (RAM and devices at that instant), and QEMU
  7.2's migration thread starts the VM again once the device state is saved. So memory,
  devices and disk belong to the same instant. `stop` flushed every layer to the file.
Then, while the VM runs on its new layer:
  `read_part`: the closed layer's clusters (`qemu-img map`, depth 0) with their data
  read from the files: the disk part of an incremental frame; for a full one every
  cluster above the base image (depth below the base's);
  `fold`: `block-commit` of the closed layer into `vmdisk`, so the chain stays three
  files long; the layer's file is deleted once the job has completed.
Layers a QEMU left behind (it died or stopped) are folded offline by images.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import MyceliumError
from agent.node.vm.checkpoint import CLUSTER, DiskPart
from agent.node.vm.qmp import Qmp, QmpError

log = logging.getLogger("mycelium.vm")

DEVICE = "disk0"  # the drive's id (spec.qemu_argv)
NODE = "vmdisk"  # the node name of the VM's own overlay
LAYER = "layer-"  # checkpoint layer files: layer-CHAIN-SEQ.qcow2 (images.fold_layers)
RUN_MAX = 16 * CLUSTER  # bytes per disk run in a frame (one zlib object each)
RESTART_DEADLINE_S = 30.0  # for the migration thread to start the VM again
FOLD_DEADLINE_S = 60.0  # for one block-commit job
POLL_S = 0.005


@dataclass(frozen=True)
class Disk:
    """The VM's disk as QMP shows it: files top first (the base image last)."""

    node: str  # node name of the top layer
    files: tuple[str, ...]
    size: int

    @property
    def layers(self) -> int:
        """How many files are checkpoint layers (on top; vmdisk comes next)."""
        return next((i for i, f in enumerate(self.files)
                     if not Path(f).name.startswith(LAYER)), len(self.files))


@dataclass
class Cut:
    closed: Disk  # the chain below the new layer: its top is the layer just closed
    pause_s: float
    layer: Path
    inc: DiskPart | None = None
    _full: DiskPart | None = field(default=None, repr=False)

    def full(self) -> DiskPart:
        """Every cluster above the base image at the checkpoint (read once, when a backup
        needs a full frame)."""
        if self._full is None:
            self._full = read_part(self.closed, full=True)
        return self._full


async def disk_of(qmp: Qmp) -> Disk | None:
    """The VM's disk (None: a diskless VM)."""
    for dev in await qmp.execute("query-block") or []:
        ins = dev.get("inserted") if isinstance(dev, dict) else None
        if dev.get("device") != DEVICE or not isinstance(ins, dict):
            continue
        files, img = [], ins.get("image")
        while isinstance(img, dict):
            files.append(str(img.get("filename", "")))
            img = img.get("backing-image")
        size = int(ins["image"].get("virtual-size", 0))
        return Disk(str(ins.get("node-name", "")), tuple(files), size)
    return None


async def cut(qmp: Qmp, disk: Disk, workdir: Path, tag: str,
              start_snapshot: Callable[[], Awaitable[None]]) -> Cut:
    """Pause, put a new layer on top, start the memory snapshot; the VM runs again when
    this returns (the snapshot itself goes on in the background)."""
    layer = workdir / f"{LAYER}{tag}.qcow2"
    await qmp.execute("stop")
    t0 = time.monotonic()
    try:
        await qmp.execute("transaction", {"actions": [{
            "type": "blockdev-snapshot-sync", "data": {
                "device": DEVICE, "snapshot-file": str(layer),
                "snapshot-node-name": f"ckpt-{tag}", "format": "qcow2"}}]})
        await start_snapshot()
    except BaseException:
        await _cont(qmp)
        raise
    # the migration thread starts the VM itself once the device state is saved; a cont
    # before that would let the guest run past the disk's instant
    deadline = time.monotonic() + RESTART_DEADLINE_S
    while await qmp.status() != "running":
        info = await qmp.execute("query-migrate")
        if isinstance(info, dict) and info.get("status") in ("completed", "failed",
                                                             "cancelled") \
                or time.monotonic() > deadline:
            await _cont(qmp)
            break
        await asyncio.sleep(POLL_S)
    return Cut(disk, time.monotonic() - t0, layer)


async def _cont(qmp: Qmp) -> None:
    if await qmp.status() != "running":
        await qmp.execute("cont")


def _map(path: str) -> list[dict[str, object]]:
    try:
        r = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", path],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MyceliumError(f"qemu-img map {path}: {e}") from e
    if r.returncode:
        raise MyceliumError(f"qemu-img map {path}: {r.stderr.strip()[-300:]}")
    out = json.loads(r.stdout)
    return out if isinstance(out, list) else []


def read_part(disk: Disk, full: bool) -> DiskPart:
    """The clusters of `disk`'s top layer (full: of every layer above the base image)
    with their data, read from the files."""
    below = disk.layers + 1 if full else 1  # depths taken: the layers and vmdisk, or 0
    runs: list[tuple[int, int, bytes | None]] = []
    fds: dict[int, int] = {}
    try:
        for e in _map(disk.files[0]):
            start, length, depth = int(e["start"]), int(e["length"]), int(e["depth"])
            if depth >= below or not e.get("present", True):
                continue
            if start % CLUSTER or (length % CLUSTER and start + length != disk.size):
                raise MyceliumError(f"{disk.files[depth]}: extent at {start} of {length} "
                                    "bytes is not whole 64 KiB clusters")
            data = bool(e.get("data"))
            if data and "offset" not in e:  # compressed: not at a place in the file
                raise MyceliumError(f"{disk.files[depth]}: extent at {start} has no offset")
            if not data and not e.get("zero"):
                continue
            if data and depth not in fds:
                fds[depth] = os.open(disk.files[depth], os.O_RDONLY)
            for at in range(0, length, RUN_MAX):
                n = min(RUN_MAX, length - at)
                runs.append((start + at, n, os.pread(fds[depth], n, int(e["offset"]) + at)
                             if data else None))
    finally:
        for fd in fds.values():
            os.close(fd)
    return DiskPart(disk.size, tuple(runs))


async def fold(qmp: Qmp, c: Cut) -> None:
    """Commit the closed layer into the VM's overlay and delete its file (nothing to do
    when the closed layer is the overlay itself: the first checkpoint)."""
    if c.closed.node == NODE:
        return
    job = f"fold-{c.closed.node}"
    await qmp.execute("block-commit", {"job-id": job, "device": DEVICE,
                                       "top-node": c.closed.node, "base-node": NODE})
    deadline = time.monotonic() + FOLD_DEADLINE_S
    while any(j.get("device") == job for j in await qmp.execute("query-block-jobs") or []):
        if time.monotonic() > deadline:
            raise QmpError(f"block-commit of {c.closed.files[0]} still running")
        await asyncio.sleep(POLL_S * 4)
    failed = [e for e in qmp.events if e.get("event") in ("BLOCK_JOB_COMPLETED",
                                                           "BLOCK_JOB_ERROR")
              and (e.get("data") or {}).get("device") == job
              and (e.get("data") or {}).get("error")]
    if failed:
        raise QmpError(f"block-commit of {c.closed.files[0]}: {failed[-1]['data']['error']}")
    for f in c.closed.files[:c.closed.layers]:  # all layers down to vmdisk went in
        Path(f).unlink(missing_ok=True)
