"""A qcow2 overlay written directly: the disk a backup hands to QEMU when it resumes a VM.

The backup holds the clusters the VM wrote above its base image (diskstore.py); at
takeover they become a qcow2 v3 file whose backing file is the base image, so QEMU reads
a replicated cluster from the overlay and every other one from the base. A cluster that
is all zeros is written as a zero cluster (L2 zero flag: reads as zeros, whatever the
base holds), the others as data.

Layout, every part a whole number of 64 KiB clusters, every cluster used once (refcount
1): header (with the backing format extension and the backing file name), refcount
table, refcount blocks, L1 table, L2 tables, data. Only what QEMU 7.2 needs to open and
write the file is written; `qemu-img check` passes on it (tests/test_ramrep_disk.py).
Format: docs/interop/qcow2.txt of QEMU.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
REFS_PER_BLOCK = CLUSTER // 2  # refcount_order 4: 16-bit refcounts
COPIED = 1 << 63  # L1/L2 entry: refcount is exactly 1
ZERO = 1  # L2 entry: the cluster reads as zeros
BACKING_FORMAT_EXT = 0xE2792ACA
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
EXT = struct.Struct(">II")
BE64 = struct.Struct(">Q")


def _up(n: int, d: int) -> int:
    return -(-n // d)


def _pad8(b: bytes) -> bytes:
    return b + bytes(-len(b) % 8)


def _zeros(b: bytes) -> bool:
    return b == bytes(len(b))


def write_overlay(path: Path, size: int, backing: str, backing_fmt: str,
                  clusters: list[int], read: Callable[[int], bytes]) -> None:
    """Write `path`: a qcow2 of `size` virtual bytes over `backing` (format
    `backing_fmt`) holding clusters `clusters` (indices, sorted), each read by
    `read(index)` (up to CLUSTER bytes; shorter is padded with zeros)."""
    zero = [_zeros(read(i)) for i in clusters]
    n_data = zero.count(False)
    l1_size = max(1, _up(size, L2_ENTRIES * CLUSTER))
    l1c = _up(l1_size * 8, CLUSTER)
    tables = sorted({i // L2_ENTRIES for i in clusters})
    rb = rt = 1
    while True:  # the refcounts count the clusters that hold them too
        total = 1 + rt + rb + l1c + len(tables) + n_data
        need_rb = _up(total, REFS_PER_BLOCK)
        need_rt = _up(need_rb * 8, CLUSTER)
        if (need_rb, need_rt) == (rb, rt):
            break
        rb, rt = need_rb, need_rt
    rt_at = 1
    rb_at = rt_at + rt
    l1_at = rb_at + rb
    l2_at = {t: l1_at + l1c + k for k, t in enumerate(tables)}
    data_at = l1_at + l1c + len(tables)

    ext = EXT.pack(BACKING_FORMAT_EXT, len(backing_fmt)) + _pad8(backing_fmt.encode())
    ext += EXT.pack(0, 0)
    name = backing.encode()
    name_at = HEADER.size + len(ext)
    if name_at + len(name) > CLUSTER:
        raise ValueError(f"backing file name of {len(name)} bytes is too long")
    header = HEADER.pack(b"QFI\xfb", 3, name_at, len(name), CLUSTER_BITS, size, 0, l1_size,
                         l1_at * CLUSTER, rt_at * CLUSTER, rt, 0, 0, 0, 0, 0, 4, HEADER.size)

    l1 = bytearray(l1c * CLUSTER)
    for t, at in l2_at.items():
        BE64.pack_into(l1, t * 8, COPIED | at * CLUSTER)
    l2 = {t: bytearray(CLUSTER) for t in tables}
    refs = bytearray(rb * CLUSTER)
    for c in range(total):
        refs[c * 2:c * 2 + 2] = b"\x00\x01"
    rtab = bytearray(rt * CLUSTER)
    for k in range(rb):
        BE64.pack_into(rtab, k * 8, (rb_at + k) * CLUSTER)

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, total * CLUSTER)
        os.pwrite(fd, header + ext + name, 0)
        at = data_at
        for i, z in zip(clusters, zero, strict=True):
            t, e = divmod(i, L2_ENTRIES)
            if z:
                BE64.pack_into(l2[t], e * 8, ZERO)
                continue
            os.pwrite(fd, read(i).ljust(CLUSTER, b"\0"), at * CLUSTER)
            BE64.pack_into(l2[t], e * 8, COPIED | at * CLUSTER)
            at += 1
        for t, table in l2.items():
            os.pwrite(fd, table, l2_at[t] * CLUSTER)
        os.pwrite(fd, l1, l1_at * CLUSTER)
        os.pwrite(fd, refs, rb_at * CLUSTER)
        os.pwrite(fd, rtab, rt_at * CLUSTER)
        os.fsync(fd)
    finally:
        os.close(fd)
