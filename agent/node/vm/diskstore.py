"""A backup's copy of one VM's disk: the clusters the VM wrote above its base image, as of
the last checkpoint the backup took (replica.py feeds it the accepted frames).

Files, beside the checkpoint frames (data dir/vm-replicas/NAME/):
  disk.data  sparse, the disk's virtual size: every replicated cluster at its offset
  disk.map   one bit per 64 KiB cluster: which clusters of disk.data are the VM's
             (the others read from the base image)
  disk.json  {chain, seq, size, applying}: the checkpoint the two files hold
A frame is applied as: disk.json says `applying: SEQ`, the clusters are written into
disk.data and fsynced, disk.map is replaced whole (temp, fsync, rename), then disk.json
names SEQ with nothing applying. A crash anywhere leaves disk.json either naming a
checkpoint the files hold exactly, or `applying`: then the files are not trusted and the
backup rebuilds them from its chain of frames (replica.py), which hold every cluster too.

`write_overlay` turns what is held into the qcow2 (qcow2.py) a resumed QEMU boots from,
over the VM's base image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.node.vm.checkpoint import CLUSTER, Checkpoint, DiskPart
from agent.node.vm.qcow2 import write_overlay
from agent.statefile import atomic_write, storage_error

RUN_MAX = 16  # clusters per run in a full disk part (one zlib object each)


def _clusters(size: int) -> int:
    return -(-size // CLUSTER)


class DiskStore:
    def __init__(self, root: Path) -> None:
        self.data, self.map, self.meta = root / "disk.data", root / "disk.map", root / "disk.json"
        self.size = 0
        self.valid = bytearray()
        self.at: tuple[str, int] | None = None  # (chain, seq) the files hold, if trusted
        self._load()

    def _load(self) -> None:
        try:
            meta = json.loads(self.meta.read_text())
            valid = bytearray(self.map.read_bytes())
            size = int(meta["size"])
            ok = meta.get("applying") is None and len(valid) == -(-_clusters(size) // 8) \
                and self.data.stat().st_size == size
        except (OSError, ValueError, KeyError, TypeError):
            return
        if ok:
            self.size, self.valid = size, valid
            self.at = (str(meta["chain"]), int(meta["seq"]))

    def holds(self, chain: str, seq: int, size: int) -> bool:
        """Whether the files hold exactly checkpoint `seq` of `chain` for a disk of `size`."""
        return self.at == (chain, seq) and self.size == size

    def is_valid(self, c: int) -> bool:
        return bool(self.valid[c >> 3] & (1 << (c & 7)))

    def _write_meta(self, chain: str, seq: int, applying: int | None) -> None:
        atomic_write(self.meta, json.dumps({"chain": chain, "seq": seq, "size": self.size,
                                            "applying": applying}).encode(), 0o600)

    def _reset(self, size: int) -> None:
        with self.data.open("wb") as f:  # truncated: a sparse file of the new size
            f.truncate(size)
        self.size, self.valid = size, bytearray(-(-_clusters(size) // 8))

    def apply(self, ck: Checkpoint) -> None:
        """Write the disk part of accepted checkpoint `ck` (a full one replaces all)."""
        h = ck.header
        if not h.disk_size:
            return
        prev = self.at
        self.at = None  # until the last write below
        self._write_meta(h.chain, prev[1] if prev else 0, h.seq)
        try:
            self._write(ck)
        except OSError as e:  # disk full: StorageError (the frame is answered 507)
            raise storage_error(e, self.data.parent) from e
        atomic_write(self.map, bytes(self.valid), 0o600)
        self._write_meta(h.chain, h.seq, None)
        self.at = (h.chain, h.seq)

    def _write(self, ck: Checkpoint) -> None:
        h = ck.header
        if h.full or h.disk_size != self.size or not self.data.is_file():
            self._reset(h.disk_size)
        fd = os.open(self.data, os.O_WRONLY)
        try:
            for off, n, data in ck.disk_data():
                os.pwrite(fd, bytes(n) if data is None else data, off)
                for c in range(off // CLUSTER, _clusters(off + n)):
                    self.valid[c >> 3] |= 1 << (c & 7)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, c: int) -> bytes:
        with self.data.open("rb") as f:
            f.seek(c * CLUSTER)
            return f.read(min(CLUSTER, self.size - c * CLUSTER))

    def full_part(self) -> DiskPart:
        """Every cluster held, as the disk part of a full frame (held in memory)."""
        runs: list[tuple[int, int, bytes | None]] = []
        with self.data.open("rb") as f:
            c, n = 0, _clusters(self.size)
            while c < n:
                if not self.is_valid(c):
                    c += 1
                    continue
                end = c
                while end < n and end - c < RUN_MAX and self.is_valid(end):
                    end += 1
                length = min(end * CLUSTER, self.size) - c * CLUSTER
                f.seek(c * CLUSTER)
                runs.append((c * CLUSTER, length, f.read(length)))
                c = end
        return DiskPart(self.size, tuple(runs))

    def write_overlay(self, out: Path, base: Path, base_fmt: str) -> None:
        """The held disk as a qcow2 over `base` at `out`, for a resumed QEMU."""
        clusters = [c for c in range(_clusters(self.size)) if self.is_valid(c)]
        write_overlay(out, self.size, str(base), base_fmt, clusters, self._read)
