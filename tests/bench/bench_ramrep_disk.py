"""Disk replication figures (printed): the tiny VM (TCG, 128 MiB, a 64 MiB qcow2 disk)
writing its counter each second plus `tiny.rate` KiB of random data to fresh clusters;
checkpoints every second into a local backup store. Per checkpoint: how long the guest
was paused (stop, snapshot transaction, memory snapshot started, running again), the
disk bytes in the frame, the frame on the wire, the whole cycle.
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_ramrep_disk.py"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

from agent.node.vm.replica import ReplicaStore
from agent.node.vm.replicator import Replicator
from agent.node.vm.spec import VmPaths, VmSpec
from agent.node.vm.supervisor import VmSupervisor
from support.checkpoints import FAST, disk_ticks, to_store
from support.tinyvm import disk_image, tiny_vm

pytestmark = pytest.mark.bench

CHECKPOINTS = 8
INTERVAL = 1.0


@pytest.mark.parametrize("rate_kib", [0, 256, 1024])
def test_pause_and_disk_bytes_per_checkpoint(tmp_path, rate_kib, capsys):
    vm = tiny_vm()
    base = disk_image(tmp_path / "base.qcow2")
    s = VmSpec("tiny", 1, 128, image=str(base), kernel=str(vm.kernel), initrd=str(vm.initrd),
               cmdline=f"{vm.cmdline} tiny.rate={rate_kib}")
    store = ReplicaStore(tmp_path / "replicas", "tiny")
    sup = VmSupervisor(s, VmPaths(tmp_path / "a"), tmp_path / "cache", policy=FAST)

    rep = Replicator("tiny", INTERVAL, sup.paths.dir, lambda: sup.qmp, lambda: ["b"],
                     to_store(store))

    async def go() -> list[dict]:
        sup.start()
        deadline = time.monotonic() + 240
        while len(disk_ticks(sup.paths.serial_log)) < 3 or sup.qmp is None:
            assert time.monotonic() < deadline, "no disk ticks"
            await asyncio.sleep(0.2)
        out = []
        for _ in range(CHECKPOINTS):
            t0 = time.monotonic()
            assert await rep.once()
            while rep.acked.get("b") != rep.seq:
                await asyncio.sleep(0.01)
            out.append(dict(rep.last))
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - t0)))
        rep.stop()
        await sup.stop()
        return out

    got = asyncio.run(go())
    inc = got[1:]
    with capsys.disabled():
        print(f"\n  guest writes {rate_kib} KiB/s + its counter; load {os.getloadavg()[0]:.1f}")
        for x in got:
            print(f"  checkpoint {x['seq']}: paused {x['pause_s'] * 1000:.0f} ms, disk "
                  f"{x['disk_bytes'] >> 10} KiB, frame {x['wire_bytes'] >> 10} KiB"
                  f"{' (full)' if x['full'] else ''}, cycle {x['cycle_s']:.2f} s, then "
                  f"block-commit {x.get('fold_s', 0) * 1000:.0f} ms")
        pauses = sorted(x["pause_s"] * 1000 for x in got)
        print(f"  pause ms: median {statistics.median(pauses):.0f}, range "
              f"{pauses[0]:.0f}-{pauses[-1]:.0f}; incremental disk KiB: "
              f"{sorted(x['disk_bytes'] >> 10 for x in inc)}")
    assert all(x["disk_bytes"] is not None for x in got)
