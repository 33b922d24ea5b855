"""Disk replication, pure and fast: disk clusters in checkpoint frames, the backup's disk
store (all or nothing, like the memory), its recovery after a crash, and the qcow2 a
resumed VM boots from (checked by qemu-img when installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.node.vm import replica
from agent.node.vm.checkpoint import CLUSTER, DiskPart, FrameError, Held, accept, decode, encode
from agent.node.vm.diskstore import DiskStore
from agent.node.vm.qcow2 import write_overlay
from agent.node.vm.replica import ReplicaStore
from support.checkpoints import snap

C = CLUSTER
SIZE = 16 * C  # a 1 MiB disk


def part(runs: dict[int, int | None], size: int = SIZE) -> DiskPart:
    """Cluster i filled with byte runs[i] (None: a zero run)."""
    return DiskPart(size, tuple((i * C, C, None if v is None else bytes([v]) * C)
                                for i, v in sorted(runs.items())))


def disk_frame(seq: int, base: int, runs: dict[int, int | None], vm: str = "db",
               chain: str = "c1", size: int = SIZE) -> bytes:
    return encode(vm, chain, seq, base, snap({seq % 8: seq}), None if base == 0 else
                  snap({(seq - 1) % 8: seq - 1}).image, disk=part(runs, size))


def held_disk(store: ReplicaStore) -> dict[int, bytes]:
    """Cluster -> data of what the backup's disk store holds."""
    d = store.disk
    return {c: d._read(c) for c in range(SIZE // C) if d.is_valid(c)}


def files(store: ReplicaStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.dir.iterdir())}


# --- frames ----------------------------------------------------------------------------------

def test_frame_round_trip_with_disk_clusters():
    f = disk_frame(1, 0, {0: 1, 3: None, 15: 7})
    ck = decode(f)
    assert ck.header.disk_size == SIZE and ck.header.disk_runs == 3
    assert list(ck.disk_data()) == [(0, C, b"\1" * C), (3 * C, C, None),
                                    (15 * C, C, b"\7" * C)]
    assert len(f) < 4 * 4096  # compressed
    # a diskless frame has no disk fields at all: frames before disks still verify
    plain = encode("db", "c1", 1, 0, snap({1: 1}), None)
    assert b"disk_size" not in plain and decode(plain).disk == ()


def test_last_cluster_may_end_at_the_disk_end():
    size = 3 * C + 512
    ck = decode(encode("db", "c1", 1, 0, snap({}), None, disk=DiskPart(
        size, ((3 * C, 512, b"\5" * 512),))))
    assert list(ck.disk_data()) == [(3 * C, 512, b"\5" * 512)]
    with pytest.raises(ValueError, match="whole clusters"):
        encode("db", "c1", 1, 0, snap({}), None, disk=DiskPart(SIZE, ((100, C, bytes(C)),)))


@pytest.mark.parametrize("damage, why", [
    ("truncate", "sha256|truncated"),
    ("flip-disk", "sha256"),  # a bit of the disk part, at the end of the frame
    ("flip-header", "sha256|garbled"),
    ("other-vm", "VM 'other'"),
    ("other-size", "disk of"),
])
def test_bad_frames_leave_memory_and_disk_unchanged(tmp_path, damage, why):
    store = ReplicaStore(tmp_path, "db")
    store.offer(disk_frame(1, 0, {0: 1, 1: 2}))
    store.offer(disk_frame(2, 1, {1: 3, 5: 4}))
    before, disk = files(store), held_disk(store)
    good = bytearray(disk_frame(3, 2, {2: 9}))
    bad = {"truncate": lambda: bytes(good[:-100]),
           "flip-disk": lambda: bytes(good[:-50]) + bytes([good[-50] ^ 4]) + bytes(good[-49:]),
           "flip-header": lambda: bytes(good[:20]) + bytes([good[20] ^ 1]) + bytes(good[21:]),
           "other-vm": lambda: disk_frame(3, 2, {2: 9}, vm="other"),
           "other-size": lambda: disk_frame(3, 2, {2: 9}, size=2 * SIZE)}[damage]()
    with pytest.raises(FrameError, match=why):
        store.offer(bad)
    assert files(store) == before and held_disk(store) == disk
    assert store.held == Held("c1", 2, 8 * 4096, SIZE)
    assert held_disk(store) == {0: b"\1" * C, 1: b"\3" * C, 5: b"\4" * C}
    store.offer(bytes(good))  # the good one is still taken after the refusal
    assert held_disk(store)[2] == b"\x09" * C


def test_full_frame_replaces_the_disk_and_zero_runs_zero(tmp_path):
    store = ReplicaStore(tmp_path, "db")
    store.offer(disk_frame(1, 0, {0: 1, 1: 2}))
    store.offer(disk_frame(2, 1, {1: None}))
    assert held_disk(store) == {0: b"\1" * C, 1: bytes(C)}  # zeroed, still the VM's
    store.offer(disk_frame(7, 0, {4: 4}, chain="c2"))  # a new primary run: full
    assert held_disk(store) == {4: b"\4" * C}
    assert sorted(p.name for p in tmp_path.joinpath("db").glob("*.ckpt")) == ["000000000007.ckpt"]


# --- crash safety -----------------------------------------------------------------------------

def test_crash_while_applying_rebuilds_the_disk_from_the_frames(tmp_path):
    store = ReplicaStore(tmp_path, "db")
    store.offer(disk_frame(1, 0, {0: 1, 1: 2}))
    store.offer(disk_frame(2, 1, {1: 3}))
    want = held_disk(store)
    # killed between `applying` and the end: clusters half written, the map not yet
    meta = json.loads(store.disk.meta.read_text())
    store.disk.meta.write_text(json.dumps({**meta, "applying": 3}))
    with store.disk.data.open("r+b") as f:
        f.write(b"\xee" * 100)
    again = ReplicaStore(tmp_path, "db")
    assert again.held.seq == 2 and held_disk(again) == want
    assert again.disk.holds("c1", 2, SIZE)


def test_crash_after_the_frame_before_its_disk(tmp_path):
    """The frame file landed (atomically) but the disk files still hold the one before:
    the restarted backup applies the chain's disk parts up to the frame it holds."""
    store = ReplicaStore(tmp_path, "db")
    store.offer(disk_frame(1, 0, {0: 1}))
    (store.dir / "000000000002.ckpt").write_bytes(disk_frame(2, 1, {3: 5}))
    again = ReplicaStore(tmp_path, "db")
    assert again.held.seq == 2 and held_disk(again) == {0: b"\1" * C, 3: b"\5" * C}


def test_a_newest_frame_rotten_on_disk_rolls_the_disk_back_with_the_memory(tmp_path):
    store = ReplicaStore(tmp_path, "db")
    for seq, runs in ((1, {0: 1}), (2, {0: 2}), (3, {0: 3, 9: 9})):
        store.offer(disk_frame(seq, 0 if seq == 1 else seq - 1, runs))
    newest = store.dir / "000000000003.ckpt"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 1
    newest.write_bytes(bytes(data))
    again = ReplicaStore(tmp_path, "db")
    assert again.held.seq == 2 and held_disk(again) == {0: b"\2" * C}


def test_compaction_keeps_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(replica, "COMPACT_AFTER", 2)
    store = ReplicaStore(tmp_path, "db")
    for seq in range(1, 5):
        store.offer(disk_frame(seq, 0 if seq == 1 else seq - 1, {seq: seq}))
    assert decode(sorted(store.dir.glob("*.ckpt"))[0].read_bytes()).header.full
    want = held_disk(store)
    for p in ("disk.data", "disk.map", "disk.json"):
        (store.dir / p).unlink()  # lost: rebuilt from the compacted full frame
    assert held_disk(ReplicaStore(tmp_path, "db")) == want == {
        s: bytes([s]) * C for s in range(1, 5)}


def test_disk_store_alone_refuses_to_trust_half_written_files(tmp_path):
    d = DiskStore(tmp_path)
    assert d.at is None
    ck = accept(disk_frame(1, 0, {2: 2}), "db", None)
    d.apply(ck)
    assert DiskStore(tmp_path).holds("c1", 1, SIZE)
    (tmp_path / "disk.data").write_bytes(b"short")  # a size that cannot be the disk
    assert DiskStore(tmp_path).at is None


# --- the disk a resumed VM boots from ----------------------------------------------------

needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils")


def raw(path: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(out)], check=True)
    return out.read_bytes()


@needs_qemu_img
def test_resume_writes_the_stream_and_a_qcow2_over_the_base(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\xbb" * SIZE)
    store = ReplicaStore(tmp_path / "r", "db")
    store.offer(disk_frame(1, 0, {0: 1, 3: 3}))
    store.offer(disk_frame(2, 1, {3: None, 15: 7}))
    out = tmp_path / "resume.qcow2"
    assert store.resume(tmp_path / "s", out, base, "raw") == 2
    subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)
    got = raw(out, tmp_path / "out.raw")
    want = bytearray(b"\xbb" * SIZE)
    want[0:C], want[3 * C:4 * C], want[15 * C:] = b"\1" * C, bytes(C), b"\7" * C
    assert got == want
    diskless = ReplicaStore(tmp_path / "r2", "db")
    diskless.offer(encode("db", "c1", 1, 0, snap({1: 1}), None))
    assert diskless.resume(tmp_path / "s2", tmp_path / "o2", base, "raw") is None


@needs_qemu_img
def test_qcow2_writer_past_one_l2_table_and_a_partial_cluster(tmp_path):
    size = (600 << 20) + 4096  # two L2 tables (512 MiB each), the last cluster partial
    base = tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(size)],
                   check=True)
    data = {0: b"\1" * C, 8200: b"\2" * C, size // C: b"\3" * 1000}
    out = tmp_path / "o.qcow2"
    write_overlay(out, size, str(base), "qcow2", sorted(data), lambda i: data[i])
    info = json.loads(subprocess.run(["qemu-img", "check", "--output=json", str(out)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["check-errors"] == 0 and info["allocated-clusters"] == 3
    m = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(out)],
                                  capture_output=True, text=True, check=True).stdout)
    mine = [(e["start"], e["length"]) for e in m if e["depth"] == 0]
    assert mine == [(0, C), (8200 * C, C), (size - 4096, 4096)]


@needs_qemu_img
def test_layers_a_dead_qemu_left_are_folded_into_the_overlay(tmp_path):
    """A QEMU that died mid-interval leaves its newest checkpoint layer holding the last
    writes: the next start commits it into the VM's overlay instead of losing them."""
    from agent.node.vm.images import overlay
    from agent.node.vm.spec import VmPaths
    from support.tinyvm import disk_image

    def qimg(*a: str) -> None:
        subprocess.run(["qemu-img", *a], check=True, capture_output=True)

    base = disk_image(tmp_path / "base.qcow2", 1)
    paths = VmPaths(tmp_path / "vm")
    paths.dir.mkdir()
    o = overlay(base, paths)
    layer = paths.dir / "layer-c1-2.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(o), str(layer))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 5 0 64k", str(layer)],
                   check=True, capture_output=True)
    gone = tmp_path / "gone.qcow2"  # a leftover whose backing file was folded away
    qimg("create", "-q", "-f", "qcow2", str(gone), "1M")
    qimg("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(gone),
         str(paths.dir / "layer-c0-1.qcow2"))
    gone.unlink()
    assert overlay(base, paths) == o
    assert not list(paths.dir.glob("layer-*"))
    assert raw(o, tmp_path / "o.raw")[:C] == b"\5" * C
