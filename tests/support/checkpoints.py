"""Helpers of the VM memory replication tests: synthetic QEMU migration streams and
checkpoint frames, and the tiny VM's counter read from a serial log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.node.vm.checkpoint import encode
from agent.node.vm.policy import Policy
from agent.node.vm.stream import BE32, BE64, F_EOS, F_MEM_SIZE, FOOTER, MAGIC, PAGE, Block, Snapshot
from support.tinyvm import COUNTER, DISK, FS

P = PAGE


def prefix(blocks: list[tuple[str, int]], section: int = 2) -> bytes:
    """Header, configuration and the RAM setup section, as QEMU 7.2 writes them."""
    out = MAGIC + b"\x07" + BE32.pack(13) + b"pc-i440fx-7.2"
    out += b"\x01" + BE32.pack(section) + b"\x03ram" + BE32.pack(0) + BE32.pack(4)
    out += BE64.pack(sum(s for _, s in blocks) | F_MEM_SIZE)
    for name, size in blocks:
        out += bytes([len(name)]) + name.encode() + BE64.pack(size)
    return out + BE64.pack(F_EOS) + bytes([FOOTER]) + BE32.pack(section)


def snap(pages: dict[int, int], npages: int = 8, tail: bytes = b"\x04devices\x00") -> Snapshot:
    """A one-block snapshot whose page i is filled with byte pages[i] (others zero)."""
    img = bytearray(npages * P)
    for i, v in pages.items():
        img[i * P:(i + 1) * P] = bytes([v]) * P
    return Snapshot(prefix([("pc.ram", npages * P)]), (Block("pc.ram", 0, npages * P),), 2,
                    img, tail)


def frame(**kw) -> bytes:
    d = dict(vm="db", chain="c1", seq=5, base=4, snap=snap({1: 1}), previous=bytes(8 * P))
    d.update(kw)
    return encode(d["vm"], d["chain"], d["seq"], d["base"], d["snap"], d["previous"])


def counters(log: Path) -> list[int]:
    """The counter values the tiny VM printed into serial log `log`, in order: complete
    lines only (a checkpoint or a kill may cut the last one)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [int(x.split()[1]) for x in text.split("\n")[:-1]
            if x.startswith(COUNTER + " ") and x.split()[1:2] and x.split()[1].isdigit()]


def fs_ticks(log: Path) -> list[int]:
    """N of each `tiny-fs N` line (the guest appended N to /mnt/log and synced)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [int(x.split()[1]) for x in text.splitlines()
            if x.startswith(FS + " ") and len(x.split()) == 2 and x.split()[1].isdigit()]


def disk_ticks(log: Path) -> list[tuple[int, int]]:
    """(N, D) of each `tiny-disk N D` line: the tick and what the disk held before it."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [(int(x.split()[1]), int(x.split()[2])) for x in text.splitlines()
            if x.startswith(DISK + " ") and len(x.split()) == 3]


INTERVAL = 1.0  # between checkpoints in the real-QEMU tests
FAST = Policy(quick_s=10.0, quick_exits=3, stable_s=60.0, backoff_min_s=0.3,
              backoff_max_s=1.0)  # a supervisor's restarts, quick for tests


async def wait_until(pred, timeout: float, what: str, show=lambda: ""):
    """pred()'s first true value, polled every 0.1 s; AssertionError after `timeout`,
    with what `show()` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; {show()}")


def to_store(store):
    """A Replicator `send` that offers each frame to the backup store `store` in process:
    200 taken, 409 refused."""
    from agent.node.vm.checkpoint import FrameError

    async def send(addr: str, name: str, frame: bytes) -> int:
        try:
            await asyncio.to_thread(store.offer, frame)
        except FrameError:
            return 409
        return 200
    return send
