"""Disk replication with real QEMU: the tiny VM (TCG) with a qcow2 disk its guest writes its
counter to (O_DIRECT, block 0) and reads back before each tick, so every `tiny-disk N D`
line says whether the disk holds what the guest's memory expects (D = N - 1).

Checkpoints of memory and disk cut in one pause are shipped into a backup's store; a
second QEMU resumes from the store: its counter goes on and its disk is of the same
instant. The control: the same memory resumed over the disk of an earlier checkpoint
shows D != N - 1, so the check would catch a disk of another instant."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.node.vm import diskckpt
from agent.node.vm.checkpoint import CLUSTER
from agent.node.vm.diskstore import DiskStore
from agent.node.vm.replica import ReplicaStore
from agent.node.vm.replicator import Replicator
from agent.node.vm.spec import VmPaths, VmSpec
from agent.node.vm.supervisor import VmSupervisor
from support.checkpoints import (
    FAST,
    INTERVAL,
    counters,
    disk_ticks,
    fs_ticks,
    to_store,
    wait_until,
)
from support.tinyvm import disk_image, fs_image, tiny_vm


def spec(base: Path) -> VmSpec:
    vm = tiny_vm()
    return VmSpec("tiny", 1, 128, image=str(base), kernel=str(vm.kernel),
                  initrd=str(vm.initrd), cmdline=vm.cmdline)


async def resumed_ticks(s: VmSpec, d: Path, cache: Path, resume_disk,
                        then=None) -> tuple[str, list]:
    """Start a QEMU resuming through `resume_disk`; its boot line and first disk ticks
    (`then(supervisor)` is awaited before it stops)."""
    sup = VmSupervisor(s, VmPaths(d), cache, policy=FAST, resume=lambda _: None,
                       resume_disk=resume_disk)
    sup.start()
    try:
        ticks = await wait_until(lambda: len(disk_ticks(sup.paths.serial_log)) >= 2 and
                                 disk_ticks(sup.paths.serial_log), 90, "disk ticks")
        if then is not None:
            await then(sup)
        return sup.boot, ticks
    finally:
        await sup.stop()


async def checkpoints(rep: Replicator, store: ReplicaStore, n: int, stale: Path, at: int,
                      ticks, sent: list[dict] | None = None) -> None:
    """`n` checkpoints shipped into `store` (one full, then incremental ones), each taken
    by the backup; the disk it holds after checkpoint `at` copied to `stale` for a
    control. Before the last, the guest has ticked twice since that copy: the control's
    disk is surely of another instant than the last checkpoint's."""
    mark = 0
    for i in range(n):
        if i == n - 1:
            await wait_until(lambda m=mark: ticks()[-1] >= m + 2, 60, "the guest ticking on")
        t0 = time.monotonic()
        assert await rep.once()
        await wait_until(lambda: rep.acked.get("backup") == rep.seq, 30, "the backup")
        if sent is not None:
            sent.append(dict(rep.last))
        if i == at:
            mark = ticks()[-1]
            stale.mkdir()
            for f in ("disk.data", "disk.map", "disk.json"):
                shutil.copy(store.dir / f, stale / f)
        await asyncio.sleep(max(0.0, INTERVAL + 0.5 - (time.monotonic() - t0)))


async def replicate_once(sup: VmSupervisor, store: ReplicaStore) -> None:
    """One full checkpoint of `sup`'s VM into `store`."""
    await wait_until(lambda: sup.qmp, 30, "QMP running")
    rep = Replicator("tiny", INTERVAL, sup.paths.dir, lambda: sup.qmp, lambda: ["b"],
                     to_store(store))
    assert await rep.once()
    await wait_until(lambda: rep.acked.get("b") == rep.seq, 30, "the new backup")
    rep.stop()


def test_memory_and_disk_resume_at_the_same_instant(tmp_path, capsys):
    base = disk_image(tmp_path / "base.qcow2")
    s = spec(base)
    store = ReplicaStore(tmp_path / "replicas", "tiny")
    primary = VmSupervisor(s, VmPaths(tmp_path / "a"), tmp_path / "cache", policy=FAST)
    stale = tmp_path / "stale"

    rep = Replicator("tiny", INTERVAL, primary.paths.dir, lambda: primary.qmp,
                     lambda: ["backup"], to_store(store))
    sent: list[dict] = []

    async def go() -> tuple[list, list, list, int]:
        primary.start()
        log = primary.paths.serial_log
        await wait_until(lambda: len(disk_ticks(log)) >= 3, 240, "disk ticks on serial")
        assert all(dd == n - 1 for n, dd in disk_ticks(log)), disk_ticks(log)
        await checkpoints(rep, store, 5, stale, 1, lambda: [n for n, _ in disk_ticks(log)],
                          sent)
        disk = await diskckpt.disk_of(primary.qmp)
        layers = sorted(primary.paths.dir.glob("layer-*.qcow2"))
        rep.stop()
        os.kill(primary.pid, 9)
        await primary.stop()
        held = store.held.seq
        # the resumed VM is a primary like any other: its disk (resume.qcow2 under new
        # layers) seeds a new backup
        again = ReplicaStore(tmp_path / "replicas2", "tiny")
        boot, ticks = await resumed_ticks(s, tmp_path / "b", tmp_path / "cache", store.resume,
                                          lambda sup: replicate_once(sup, again))
        seeded = int(again.disk._read(0).rstrip(b"\0").strip() or 0)
        assert seeded >= ticks[0][0], (seeded, ticks)  # the counter it wrote after resuming
        assert boot == f"resumed from checkpoint {held}"
        first = counters(tmp_path / "b" / "serial.log")

        def stale_resume(stream: Path, out: Path, b: Path, fmt: str) -> int | None:
            seq = store.resume(stream, out, b, fmt)  # this instant's memory...
            DiskStore(stale).write_overlay(out, b, fmt)  # ...over an earlier disk
            return seq

        boot2, control = await resumed_ticks(s, tmp_path / "c", tmp_path / "cache",
                                             stale_resume)
        assert boot2 == boot
        return [disk, layers], ticks, control, first[0]

    (disk, layers), ticks, control, first = asyncio.run(go())
    assert sent[0]["full"] and sent[0]["disk_bytes"] >= CLUSTER
    for x in sent[1:]:  # the guest rewrites block 0 each tick: that one cluster, or none
        assert not x["full"] and x["disk_bytes"] in (0, CLUSTER), x
    assert len(disk.files) == 3 and len(layers) == 1  # base, overlay, the open layer
    n, d = ticks[0]
    assert n > 2 and first > 2, (ticks, first)  # resumed, not booted again
    assert all(dd == nn - 1 for nn, dd in ticks), ticks  # the disk of the same instant
    assert control[0][1] != control[0][0] - 1, control  # the control shows a stale disk
    with capsys.disabled():
        for x in sent:
            print(f"\n  checkpoint {x['seq']}: paused {x['pause_s'] * 1000:.0f} ms, disk "
                  f"{x['disk_bytes'] >> 10} KiB, on the wire {x['wire_bytes'] >> 10} KiB, "
                  f"cycle {x['cycle_s']} s")
        print(f"  resumed: first disk ticks {ticks}; control over an older disk {control}")


def fs_check(disk: Path, out: Path) -> tuple[int, str, list[int]]:
    """e2fsck -fn of the file system on `disk` (a qcow2 chain), its output, and the
    numbers the guest appended to /log."""
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(out)], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True, text=True)
    log = subprocess.run(["debugfs", "-R", "cat /log", str(out)], capture_output=True,
                         text=True).stdout
    return fsck.returncode, fsck.stdout + fsck.stderr, [int(x) for x in log.split()
                                                        if x.isdigit()]


def test_a_file_system_on_the_disk_survives_the_move(tmp_path, capsys):
    """ext2 on the disk, the guest appending to a log and rewriting files with `sync` each
    second: resumed on a second QEMU and shut down cleanly there, the file system checks
    clean and the log counts on without a gap. The control (the same memory over the
    disk of an earlier checkpoint) leaves it damaged."""
    if not shutil.which("e2fsck") or not shutil.which("debugfs"):
        pytest.skip("needs e2fsprogs")
    vm = tiny_vm(fs=True)
    s = VmSpec("tiny", 1, 128, image=str(fs_image(tmp_path / "base.raw")),
               kernel=str(vm.kernel), initrd=str(vm.initrd), cmdline=f"{vm.cmdline} tiny.fs=1")
    store = ReplicaStore(tmp_path / "replicas", "tiny")
    primary = VmSupervisor(s, VmPaths(tmp_path / "a"), tmp_path / "cache", policy=FAST)
    rep = Replicator("tiny", INTERVAL, primary.paths.dir, lambda: primary.qmp,
                     lambda: ["backup"], to_store(store))
    stale = tmp_path / "stale"

    async def run(d: Path, resume_disk) -> list[int]:
        sup = VmSupervisor(s, VmPaths(d), tmp_path / "cache", policy=FAST,
                           resume=lambda _: None, resume_disk=resume_disk)
        sup.start()
        try:
            return await wait_until(lambda: len(fs_ticks(sup.paths.serial_log)) >= 3 and
                                    fs_ticks(sup.paths.serial_log), 90, "fs ticks")
        finally:
            await sup.stop()  # ACPI powerdown: the guest unmounts, then powers off

    async def go() -> tuple[list[int], list[int]]:
        primary.start()
        await wait_until(lambda: len(fs_ticks(primary.paths.serial_log)) >= 3, 240,
                         "fs ticks on serial")
        await checkpoints(rep, store, 4, stale, 0, lambda: fs_ticks(primary.paths.serial_log))
        rep.stop()
        os.kill(primary.pid, 9)
        await primary.stop()
        ticks = await run(tmp_path / "b", store.resume)

        def stale_resume(stream: Path, out: Path, b: Path, fmt: str) -> int | None:
            seq = store.resume(stream, out, b, fmt)
            DiskStore(stale).write_overlay(out, b, fmt)
            return seq

        return ticks, await run(tmp_path / "c", stale_resume)

    ticks, control = asyncio.run(go())
    rc, out, log = fs_check(tmp_path / "b" / "resume.qcow2", tmp_path / "b.raw")
    assert ticks[0] > 2, ticks  # resumed, not booted again
    assert rc == 0, out
    assert log == list(range(1, len(log) + 1)) and len(log) >= ticks[-1], (log, ticks)
    crc, cout, clog = fs_check(tmp_path / "c" / "resume.qcow2", tmp_path / "c.raw")
    with capsys.disabled():
        print(f"\n  resumed at tiny-fs {ticks[0]}: e2fsck clean, /log 1..{len(log)}; control "
              f"over an older disk: e2fsck exit {crc}, /log {clog[:3]}...{clog[-3:]}")
    assert crc != 0 or clog != list(range(1, len(clog) + 1)), (cout, clog)
