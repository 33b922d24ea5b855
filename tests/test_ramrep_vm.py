"""VM memory replication with real QEMU (the tiny VM of tests/support/tinyvm.py, TCG):
checkpoints taken from a running guest, shipped as page diffs into a backup's store,
and a second QEMU resumed from the store: the guest's counter goes on, never from 1.
The backup's store on disk: a corrupted newest checkpoint falls back to the one before."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.node.vm.checkpoint import FrameError, split
from agent.node.vm.cpulimit import CpuLimit, quota_us
from agent.node.vm.replica import ReplicaStore
from agent.node.vm.replicator import Replicator
from agent.node.vm.spec import VmPaths, VmSpec
from agent.node.vm.supervisor import VmSupervisor
from support.checkpoints import FAST, INTERVAL, counters, to_store, wait_until
from support.tinyvm import COUNTER, tiny_vm


def spec() -> VmSpec:
    vm = tiny_vm()
    return VmSpec("tiny", 1, 128, kernel=str(vm.kernel), initrd=str(vm.initrd),
                  cmdline=vm.cmdline)


def test_checkpoints_ship_diffs_and_a_backup_resumes_the_counter(tmp_path, capsys):
    store = ReplicaStore(tmp_path / "replicas", "tiny")
    primary = VmSupervisor(spec(), VmPaths(tmp_path / "a"), tmp_path / "cache", policy=FAST)

    rep = Replicator("tiny", INTERVAL, primary.paths.dir, lambda: primary.qmp,
                     lambda: ["backup"], to_store(store))
    sent: list[dict] = []

    async def go() -> tuple[int, float, int]:
        primary.start()
        log = primary.paths.serial_log
        await wait_until(lambda: len(counters(log)) >= 3, 240, "the counter on serial")
        for _ in range(5):  # one full, then incremental ones
            t0 = time.monotonic()
            assert await rep.once()
            await wait_until(lambda: rep.acked.get("backup") == rep.seq, 30, "the backup")
            sent.append(dict(rep.last))
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - t0)))
        rep.stop()
        at_last = max(counters(log))  # the counter when the last checkpoint was taken
        os.kill(primary.pid, 9)  # the primary's QEMU dies
        await primary.stop()
        backup = VmSupervisor(spec(), VmPaths(tmp_path / "b"), tmp_path / "cache",
                              policy=FAST, resume=store.resume_stream)
        t0 = time.monotonic()
        backup.start()
        blog = backup.paths.serial_log
        first = await wait_until(lambda: counters(blog), 60, "the counter on the backup")
        took = time.monotonic() - t0
        assert backup.boot == f"resumed from checkpoint {store.held.seq}"
        # the resumed VM is a primary like any other: its own checkpoints seed a new backup
        await wait_until(lambda: backup.qmp, 30, "QMP on the resumed VM")
        again = ReplicaStore(tmp_path / "replicas2", "tiny")

        async def send2(addr: str, name: str, frame: bytes) -> int:
            await asyncio.to_thread(again.offer, frame)
            return 200

        rep2 = Replicator("tiny", INTERVAL, backup.paths.dir, lambda: backup.qmp,
                          lambda: ["backup2"], send2)
        assert await rep2.once()
        await wait_until(lambda: again.held is not None, 30, "a full checkpoint on backup 2")
        rep2.stop()
        await backup.stop()
        return at_last, took, first[0]

    at_last, took, first = asyncio.run(go())
    assert sent[0]["full"] and not any(s["full"] for s in sent[1:])
    for s in sent[1:]:  # the incremental ones scale with what the guest dirtied
        assert s["dirtied_bytes"] < s["image_bytes"] // 20
        assert s["wire_bytes"] < s["dirtied_bytes"] + 64 * 1024
    assert first > 1 and first >= at_last - 2  # no older than one interval (+ transfer)
    with capsys.disabled():
        for s in sent:
            print(f"\n  checkpoint {s['seq']}: image {s['image_bytes'] >> 20} MiB, dirtied "
                  f"{'all' if s['dirtied_bytes'] is None else s['dirtied_bytes'] >> 10} KiB,"
                  f" on the wire {s['wire_bytes'] >> 10} KiB; snapshot {s['snapshot_s']} s, "
                  f"parse {s['parse_s']} s, diff {s['diff_s']} s, encode {s['encode_s']} s")
        print(f"  resumed in {took:.2f} s at {COUNTER} {first} (last seen on the primary "
              f"before the kill: {at_last})")

    # the backup restarted: it loads the chain; a newest file bit-flipped on disk is
    # dropped and the one before it is resumed from
    files = sorted((tmp_path / "replicas" / "tiny").glob("*.ckpt"))
    assert len(files) == 5
    data = bytearray(files[-1].read_bytes())
    data[len(data) // 2] ^= 0x10
    files[-1].write_bytes(bytes(data))
    again = ReplicaStore(tmp_path / "replicas", "tiny")
    assert again.held is not None and again.held.seq == 4
    assert not files[-1].exists()
    assert again.resume_stream(tmp_path / "s") == 4


def test_final_checkpoint_pauses_the_guest_and_resumes_exactly_there(tmp_path, capsys):
    """A planned move's final checkpoint (Replicator.final: a plain `migrate`) leaves the
    guest paused once the backup took it; a QEMU resumed from the backup's store goes on
    from exactly there, and `thaw` (the move was refused) lets the paused guest run on."""
    store = ReplicaStore(tmp_path / "replicas", "tiny")
    primary = VmSupervisor(spec(), VmPaths(tmp_path / "a"), tmp_path / "cache", policy=FAST)

    async def send(addr: str, name: str, frame: bytes) -> int:
        await asyncio.to_thread(store.offer, frame)
        return 200

    rep = Replicator("tiny", INTERVAL, primary.paths.dir, lambda: primary.qmp,
                     lambda: ["backup"], send)

    async def go() -> tuple[dict, int, int, list[int]]:
        primary.start()
        log = primary.paths.serial_log
        await wait_until(lambda: len(counters(log)) >= 3, 240, "the counter on serial")
        assert await rep.once()  # the backup holds a full checkpoint, as before a move
        await wait_until(lambda: rep.acked.get("backup") == rep.seq, 30, "the backup")
        await asyncio.sleep(1.5)
        out = await rep.final("backup")
        assert store.held is not None and store.held.seq == out["seq"] == 2
        assert await primary.qmp.status() == "postmigrate" and not await rep.once()
        paused_at = counters(log)[-1]
        target = VmSupervisor(spec(), VmPaths(tmp_path / "b"), tmp_path / "cache",
                              policy=FAST, resume=store.resume_stream)
        target.start()
        first = (await wait_until(lambda: counters(target.paths.serial_log), 60,
                                  "the counter on the target"))[0]
        await target.stop()
        await asyncio.sleep(1.5)
        assert counters(log)[-1] == paused_at  # paused all along
        await rep.thaw()
        await wait_until(lambda: counters(log)[-1] >= paused_at + 2, 30, "the guest again")
        assert await rep.once()  # replication goes on (background snapshots again)
        rep.stop()
        await primary.stop()
        return out, paused_at, first, counters(log)

    out, paused_at, first, after = asyncio.run(go())
    with capsys.disabled():
        print(f"\n  final checkpoint {out['seq']}: migrate {out['migrate_s']} s, taken after "
              f"{out['taken_s']} s, {out['wire_bytes'] >> 10} KiB; paused at {COUNTER} "
              f"{paused_at}, the resumed copy began at {first}")
    assert paused_at < first <= paused_at + 2  # at most the line the pause cut is missing
    resumed = after[after.index(paused_at):]
    assert resumed == list(range(paused_at, paused_at + len(resumed)))  # nothing skipped


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_backup_refuses_and_keeps_the_last_good(tmp_path, damage):
    from support.checkpoints import frame

    store = ReplicaStore(tmp_path, "db")
    store.offer(frame(seq=4, base=0, previous=None))
    good = frame(seq=5, base=4)
    bad = good[:-7] if damage == "truncate" else frame(vm="other", seq=5, base=4)
    with pytest.raises(FrameError):
        store.offer(bad)
    assert store.held.seq == 4 and store.refused == 1
    assert sorted(p.name for p in Path(tmp_path, "db").iterdir()) == ["000000000004.ckpt"]
    parts = split(good, 3, b"p")
    assert store.offer(parts[2]) is None and store.offer(parts[0]) is None
    store.offer(parts[1])  # the last part: the whole frame is taken
    assert store.held.seq == 5


# --- the CPU cap that throttles a VM ---------------------------------------------------------

@pytest.mark.parametrize("cpus, level, quota", [
    (1, 0.0, None), (1, 0.5, 50_000), (2, 0.5, 100_000), (1, 1.0, 1_000), (4, 0.99, 8_000),
])
def test_cpu_quota(cpus, level, quota):
    assert quota_us(cpus, level) == quota


def test_cpu_limit_writes_a_cgroup_of_its_own(tmp_path):
    (tmp_path / "cpu").mkdir()  # a v1 hierarchy
    lim = CpuLimit("db", 2, root=tmp_path)
    asyncio.run(lim.set(1234, 0.5))
    d = tmp_path / "cpu" / "mycelium-vm-db"
    assert (d / "cgroup.procs").read_text() == "1234"
    assert (d / "cpu.cfs_quota_us").read_text() == "100000"
    asyncio.run(lim.set(1234, 0.0))
    assert (d / "cpu.cfs_quota_us").read_text() == "-1" and lim.level == 0.0
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu")
    asyncio.run(CpuLimit("db", 1, root=v2).set(1, 0.75))
    assert (v2 / "mycelium-vm-db" / "cpu.max").read_text() == "26000 100000"  # 0.75 -> 74 % of 99
    with pytest.raises(OSError, match="no cgroup cpu"):
        asyncio.run(CpuLimit("db", 1, root=tmp_path / "none").set(1, 0.5))


def test_cpu_limit_slows_a_real_process(tmp_path):
    """On this host's cgroup hierarchy: a busy process capped at 90 % throttle gets about
    10 % of a CPU."""
    root = Path("/sys/fs/cgroup")
    if not os.access(root / "cpu", os.W_OK) and not (root / "cgroup.controllers").is_file():
        pytest.skip("no writable cgroup cpu controller")
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    lim = CpuLimit(f"test-{os.getpid()}", 1)
    try:
        try:
            asyncio.run(lim.set(busy.pid, 0.9))
        except OSError as e:
            pytest.skip(f"cgroup not writable here: {e}")
        t0, c0 = time.monotonic(), cpu_s(busy.pid)
        time.sleep(2.0)
        share = (cpu_s(busy.pid) - c0) / (time.monotonic() - t0)
        assert share < 0.25, share
    finally:
        busy.kill()
        busy.wait()
        for d in (root / "cpu" / f"mycelium-vm-{lim.name}", root / f"mycelium-vm-{lim.name}"):
            if d.is_dir():
                d.rmdir()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
