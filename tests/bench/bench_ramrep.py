"""VM memory replication figures (printed), the tiny VM under TCG at 128 and 256 MiB:
- the two checkpoint methods of QEMU 7.2 side by side: `background-snapshot` migration to
  a file (the guest keeps running) vs guest RAM in a shared memory-backend-file with a
  `stop`, device state only (`x-ignore-shared`), the RAM file copied, `cont`: time, pause,
  bytes, and whether a fresh QEMU resumes from the result;
- for the chosen one, full and incremental checkpoint frames of the idle guest: image
  bytes, bytes dirtied, bytes on the wire, and the time of each step.
Run: .venv/bin/python -m pytest -m bench -s tests/bench/bench_ramrep.py"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.node.vm.checkpoint import encode, page_runs
from agent.node.vm.qmp import Qmp, QmpError
from agent.node.vm.replicator import background_snapshot
from agent.node.vm.stream import parse, to_stream
from support.checkpoints import counters
from support.tinyvm import BUSYBOX, TinyVM, newc, tiny_vm

pytestmark = pytest.mark.bench


def argv(d: Path, tag: str, mem: int, shared: Path | None = None,
         incoming: str | None = None, initrd: Path | None = None, append: str = ""
         ) -> list[str]:
    vm = tiny_vm()
    if initrd is not None:
        vm = TinyVM(vm.kernel, initrd)
    a = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-smp", "1", "-m", str(mem),
         "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
         "-qmp", f"unix:{d}/{tag}.qmp,server=on,wait=off", "-serial", f"file:{d}/{tag}.log",
         "-kernel", str(vm.kernel), "-initrd", str(vm.initrd),
         "-append", f"{vm.cmdline} {append}".strip(),
         "-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
    if shared:
        a += ["-object", f"memory-backend-file,id=mem,size={mem}M,mem-path={shared},share=on",
              "-machine", "memory-backend=mem"]
    return a + (["-incoming", incoming] if incoming else [])


async def start(d: Path, tag: str, *args, **kw) -> tuple[subprocess.Popen, Qmp]:
    p = subprocess.Popen(argv(d, tag, *args, **kw), stdin=subprocess.DEVNULL)
    for _ in range(100):
        try:
            return p, await Qmp.connect(d / f"{tag}.qmp")
        except QmpError:
            await asyncio.sleep(0.1)
    raise AssertionError("no QMP")


async def counting(d: Path, tag: str, n: int, timeout: float = 180) -> int:
    t0 = time.monotonic()
    while len(counters(d / f"{tag}.log")) < n:
        if time.monotonic() - t0 > timeout:
            return 0
        await asyncio.sleep(0.2)
    return counters(d / f"{tag}.log")[-1]


async def resumes(d: Path, tag: str, mem: int, **kw) -> str:
    """Whether a fresh QEMU resumes at the checkpoint: the counter goes on, not from 1."""
    p, q = await start(d, tag, mem, **kw)
    try:
        if kw.get("incoming") == "defer":
            await q.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "x-ignore-shared", "state": True}]})
            await q.execute("migrate-incoming", {"uri": f"exec:cat {d}/dev.state"})
        await asyncio.sleep(4)
        seen = counters(d / f"{tag}.log")
        return f"resumed at {seen[0]}" if seen and seen[0] > 1 else \
            f"not resumed ({await q.status()}, counter {seen[:1]})"
    finally:
        p.kill()
        p.wait()


async def background(d: Path, mem: int) -> list[str]:
    p, q = await start(d, "bg", mem)
    await counting(d, "bg", 3)
    out, prev = [], None
    for i in range(4):
        t0 = time.monotonic()
        await background_snapshot(q, d / "bg.stream", i > 0)
        t1 = time.monotonic()
        data = (d / "bg.stream").read_bytes()
        pages: list[int] = []  # as the primary does: parsed into the previous image
        snap = parse(data, None if prev is None else prev.image, pages)
        runs = None if prev is None else page_runs(pages)
        t2 = time.monotonic()
        frame = encode("b", "c", i + 1, 0 if prev is None else i, snap,
                       None if prev is None else prev.image, runs)
        t3 = time.monotonic()
        dirtied = "all" if runs is None else f"{sum(n for _, n in runs) >> 10} KiB"
        out.append(f"  {mem} MiB background-snapshot {i + 1}: {t1 - t0:.2f} s running "
                   f"(stream {len(data) >> 20} MiB), parse+diff {t2 - t1:.2f} s, encode "
                   f"{t3 - t2:.2f} s; image {snap.size >> 20} MiB, dirtied {dirtied}, "
                   f"frame {len(frame) >> 10} KiB")
        prev = snap
        await asyncio.sleep(1)
    p.kill()
    p.wait()
    (d / "bg.resume").write_bytes(to_stream(prev))
    out.append(f"  {mem} MiB background-snapshot resume: "
               f"{await resumes(d, 'bgr', mem, incoming=f'exec:cat {d}/bg.resume')}")
    return out


async def shared(d: Path, mem: int) -> list[str]:
    ram = Path(f"/dev/shm/mycelium-bench-{mem}")
    ram.unlink(missing_ok=True)
    p, q = await start(d, "sh", mem, shared=ram)
    await counting(d, "sh", 3)
    await q.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": True}]})
    out = []
    for i in range(3):
        t0 = time.monotonic()
        await q.execute("stop")
        await q.execute("migrate", {"uri": f"exec:cat > {d}/dev.state"})
        while (await q.execute("query-migrate")).get("status") not in ("completed", "failed"):
            await asyncio.sleep(0.005)
        t1 = time.monotonic()
        image = ram.read_bytes()
        await q.execute("cont")
        t2 = time.monotonic()
        out.append(f"  {mem} MiB shared RAM + stop {i + 1}: paused {t2 - t0:.2f} s (device "
                   f"state {t1 - t0:.3f} s, {(d / 'dev.state').stat().st_size >> 10} KiB; "
                   f"RAM copy {t2 - t1:.2f} s)")
        await asyncio.sleep(1)
    p.kill()
    p.wait()
    ram.unlink()
    copy = Path(f"/dev/shm/mycelium-bench-{mem}r")
    copy.write_bytes(image)
    try:
        out.append(f"  {mem} MiB shared RAM resume: "
                   f"{await resumes(d, 'shr', mem, shared=copy, incoming='defer')}")
    finally:
        copy.unlink()
    return out


@pytest.mark.parametrize("mem", [128, 256, 1024])
def test_bench_checkpoint_methods(tmp_path, mem):
    tiny_vm()
    lines = asyncio.run(background(tmp_path, mem)) + asyncio.run(shared(tmp_path, mem))
    print("\n" + "\n".join(lines))
    shutil.rmtree(tmp_path, ignore_errors=True)


PARALLEL_YAML = """\
schema: 1
network: {name: local}
spores: {primary: {target_sclerotia: 1}}
services:
  endomycetes:
    web: {image: localhost/web:1, replicas: 1}
  endophytes:
    tiny: {kernel: /nonexistent/vmlinuz, memory_mb: 128, backups: 1}
"""


def test_bench_parallel_connections(start_cluster):
    """A 32 MiB full frame (incompressible pages) POSTed to a real backup over the node
    API's mutual TLS, whole or split over 2, 4 and 8 connections at once: time to taken.
    (The VM itself cannot start: no kernel; its backup still takes checkpoints.)"""
    import random
    import statistics

    from agent.authoring.identity import sign_state
    from agent.authoring.netdir import NetworkDir
    from agent.client import PeerClient
    from agent.node.datadir import NodeDir
    from agent.node.vm.checkpoint import split
    from agent.tls import client_context
    from support.agents import GOSSIP, api, post_envelope, wait_for
    from support.checkpoints import snap

    c = start_cluster(2, sclerotia=1, extra_args=GOSSIP)
    net = NetworkDir(c.network)
    assert post_envelope(c, sign_state(net, PARALLEL_YAML.encode())[1], c.nodes[0].addr)[1] == 200
    n1, n2 = c.nodes[0], c.nodes[1]  # the backup, and the placed primary whose cert posts
    wait_for(lambda: api(c, "/api/v1/vms", n1.addr)["backups"], 60, "n1 backing up tiny")
    s = snap({}, npages=8192)
    s.image[:] = random.Random(1).randbytes(len(s.image))
    url = f"https://{n1.addr}/api/v1/vms/tiny/checkpoint"

    async def go() -> list[str]:
        out, seq = [], 100
        d = NodeDir(Path(n2.data_dir))
        async with PeerClient(client_context(d.crt, d.key, d.ca_crt), timeout=120) as peers:
            for n in (1, 2, 4, 8, 1):
                took = []
                for _ in range(3):
                    seq += 1
                    frame = encode("tiny", "bench", seq, 0, s, None)
                    bodies = [frame] if n == 1 else split(frame, n, b"%d" % seq)
                    t0 = time.monotonic()
                    replies = await asyncio.gather(*(peers.request("POST", url, data=b)
                                                     for b in bodies))
                    took.append(time.monotonic() - t0)
                    assert sorted(r.status for r in replies)[0] == 200, replies
                out.append(f"  {len(frame) >> 20} MiB frame over {n} connection(s): median "
                           f"{statistics.median(took):.2f} s "
                           f"({len(frame) / statistics.median(took) / 2**20:.0f} MiB/s)")
        return out

    print("\n" + "\n".join(asyncio.run(go())))


GUEST_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /dev
mount -t proc proc /proc
mount -t devtmpfs dev /dev
"""  # the start of every bench guest's /init

WORK_INIT = GUEST_INIT + """n=0
while true; do
  i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done
  n=$((n+1)); echo "work $n"
done
"""


def work_done(log: Path) -> int:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return sum(1 for x in text.splitlines() if x.startswith("work "))


async def rate(log: Path, seconds: float) -> float:
    n0, t0 = work_done(log), time.monotonic()
    await asyncio.sleep(seconds)
    return (work_done(log) - n0) / (time.monotonic() - t0)


def guest_initrd(d: Path, init: str) -> Path:
    """An initramfs of busybox whose /init is `init`."""
    import gzip

    initrd = d / "guest.gz"
    initrd.write_bytes(gzip.compress(newc({"init": (init.encode(), 0o755),
                                           "bin/busybox": (BUSYBOX.read_bytes(), 0o755)})))
    return initrd


def store_sender(d: Path, name: str) -> Callable[[str, str, bytes], Awaitable[int]]:
    """A Replicator's `send` into a backup store in this process (no network)."""
    from agent.node.vm.replica import ReplicaStore

    store = ReplicaStore(d / "replicas", name)

    async def send(addr: str, vm: str, frame: bytes) -> int:
        await asyncio.to_thread(store.offer, frame)
        return 200

    return send


def test_bench_guest_slowdown(tmp_path):
    """A guest doing fixed units of CPU work (a shell loop), 256 MiB, TCG: units per
    second without replication, with a checkpoint every second shipped to a backup store
    in the same host, and without again (the machine's load drifts). BENCH_INTERVAL_S sets
the interval (default 1), BENCH_WINDOW_S the windows (default 20)."""
    from agent.node.vm.replicator import Replicator

    initrd = guest_initrd(tmp_path, WORK_INIT)
    send = store_sender(tmp_path, "w")
    window = float(os.environ.get("BENCH_WINDOW_S", "20"))
    interval = float(os.environ.get("BENCH_INTERVAL_S", "1"))

    async def go() -> str:
        p, q = await start(tmp_path, "w", 256, initrd=initrd)
        log = tmp_path / "w.log"
        try:
            t0 = time.monotonic()
            while work_done(log) < 3:
                assert time.monotonic() - t0 < 180, "the work guest did not start"
                await asyncio.sleep(0.5)
            before = await rate(log, window)
            rep = Replicator("w", interval, tmp_path, lambda: q, lambda: ["b"], send)
            rep.start()
            during = await rate(log, window)
            rep.stop()
            seq, last = rep.seq, rep.last
            await asyncio.sleep(2)
            after = await rate(log, window)
        finally:
            p.kill()
            p.wait()
        base = (before + after) / 2
        return (f"  256 MiB guest, {window:g} s windows: {before:.2f} / {during:.2f} / "
                f"{after:.2f} work units per s without / with / without replication "
                f"({seq} checkpoints at {interval:g} s, last dirtied "
                f"{(last.get('dirtied_bytes') or 0) >> 10} KiB, sent "
                f"{last.get('wire_bytes', 0) >> 10} KiB; last cycle: snapshot "
                f"{last.get('snapshot_s')} s, parse+diff {last.get('parse_s')} s, "
                f"encode {last.get('encode_s')} s, all {last.get('cycle_s')} s): slowdown "
                f"{(1 - during / base) * 100:.0f} % (target under 15 %)")

    print("\n" + asyncio.run(go()))


# The guest overwrites the same RATE KiB of a file in its RAM (initramfs) with random
# bytes once a second: a known dirtying rate, incompressible.
DIRTY_INIT = GUEST_INIT + """rate=$(sed -n 's/.*dirty=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
echo "dirtying ${rate:-0} KiB/s"
while true; do
  [ "${rate:-0}" -gt 0 ] && dd if=/dev/urandom of=/buf bs=1024 count=$rate conv=notrunc 2>/dev/null
  echo tick; sleep 1
done
"""


@pytest.mark.parametrize("kib_s", [0, 256, 1024, 4096])
def test_bench_dirty_rate(tmp_path, kib_s):
    """Checkpoints of a 256 MiB guest that dirties memory at a known rate, every second,
    to a backup store in this process: bytes dirtied and on the wire per checkpoint
    follow the rate, not the guest's size (BENCH_CHECKPOINTS sets how many, default 10)."""
    import statistics

    from agent.node.vm.replicator import Replicator

    tiny_vm()
    initrd = guest_initrd(tmp_path, DIRTY_INIT)
    send = store_sender(tmp_path, "d")
    count = int(os.environ.get("BENCH_CHECKPOINTS", "10"))

    async def go() -> str:
        p, q = await start(tmp_path, "d", 256, initrd=initrd, append=f"dirty={kib_s}")
        try:
            log = tmp_path / "d.log"
            t0 = time.monotonic()
            while (log.read_text(errors="replace") if log.is_file() else "").count("tick") < 3:
                assert time.monotonic() - t0 < 180, "the guest did not start"
                await asyncio.sleep(0.5)
            rep = Replicator("d", 1.0, tmp_path, lambda: q, lambda: ["b"], send)
            rep.start()
            seen: dict[int, dict] = {}
            while len(seen) < count + 2:  # the first (full) and one to settle are not counted
                if rep.last.get("seq") and "wire_bytes" in rep.last:
                    seen[rep.last["seq"]] = dict(rep.last)
                await asyncio.sleep(0.05)
            rep.stop()
        finally:
            p.kill()
            p.wait()
        rows = [seen[k] for k in sorted(seen)[2:]]

        def med(key: str) -> float:
            return statistics.median(float(r.get(key) or 0) for r in rows)
        return (f"  256 MiB guest dirtying {kib_s} KiB/s, {len(rows)} checkpoints at 1 s: "
                f"dirtied {med('dirtied_bytes') / 1024:.0f} KiB, on the wire "
                f"{med('wire_bytes') / 1024:.0f} KiB (medians; range "
                f"{min(r['wire_bytes'] for r in rows) >> 10}-"
                f"{max(r['wire_bytes'] for r in rows) >> 10} KiB), snapshot "
                f"{med('snapshot_s'):.2f} s, parse+diff {med('parse_s'):.2f} s, cycle "
                f"{med('cycle_s'):.2f} s")

    print("\n" + asyncio.run(go()))
