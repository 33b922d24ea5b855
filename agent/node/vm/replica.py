"""A backup's copy of one VM's memory: checkpoints taken, kept on disk, resumed from.

On disk (data dir/vm-replicas/NAME/) the chain of checkpoint frames from the last full
one, `SEQ.ckpt`, each written whole (temp, fsync, rename) only after `accept` passed:
a frame refused, truncated or corrupted never lands there, so what the directory holds is
always a chain of good ones. In memory the image they add up to, patched with each
accepted frame. When the chain grows past COMPACT_AFTER frames, the backup writes its
image as a full frame of the same sequence and drops the older files.

Loading after a restart replays the chain and stops at the first frame that no longer
verifies (a disk that flipped a bit): the backup resumes from the last good one before
it, and asks the primary for a full one (its held sequence is then behind the chain).

`resume_stream` writes the migration stream a QEMU started with `-incoming` loads: the
VM resumes at the last good checkpoint instead of booting cold. For a VM with a disk the
frames carry its clusters too (diskstore.py keeps them applied in disk.data); `resume`
writes the stream and the disk of the same checkpoint, or nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent.node.vm.checkpoint import (
    Checkpoint,
    FrameError,
    Held,
    Reassembler,
    accept,
    encode,
    is_part,
)
from agent.node.vm.diskstore import DiskStore
from agent.node.vm.stream import Snapshot, parse_prefix, to_stream
from agent.statefile import atomic_write

log = logging.getLogger("mycelium.vm")

COMPACT_AFTER = 32  # incremental frames on disk before the backup folds them into a full


def _seq(p: Path) -> int:
    return int(p.name.split(".")[0])


class ReplicaStore:
    def __init__(self, root: Path, vm: str) -> None:
        self.dir, self.vm = root / vm, vm
        self.held: Held | None = None
        self.snap: Snapshot | None = None
        self.taken_at: float | None = None  # wall clock of the last good one
        self.refused = 0
        self.last_refusal = ""
        self.received_bytes = 0
        self.chain_start: dict[str, Any] | None = None  # the held chain's first frame here
        self._lock = threading.Lock()  # offer() runs in a worker thread
        self._parts = Reassembler()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = DiskStore(self.dir)
        self._load()
        self._recover_disk()

    # --- taking checkpoints ----------------------------------------------------------

    def offer(self, frame: bytes) -> Held | None:
        """Take `frame` if the rules allow (FrameError with the reason otherwise); a part
        of a split frame is kept until the frame is whole (None meanwhile)."""
        with self._lock:
            try:
                if is_part(frame):
                    whole = self._parts.add(frame)
                    if whole is None:
                        return None
                    frame = whole
                ck = accept(frame, self.vm, self.held)
                new_chain = self.held is None or ck.header.chain != self.held.chain
            except FrameError as e:
                self.refused += 1
                self.last_refusal = str(e)
                log.warning("vm %s: checkpoint refused: %s", self.vm, e)
                raise
            atomic_write(self.dir / f"{ck.header.seq:012d}.ckpt", frame, 0o600)
            self._apply(ck)
            self.disk.apply(ck)
            self.received_bytes += len(frame)
            self.taken_at = time.time()
            if new_chain:  # a new primary's chain must start with a full frame
                self.chain_start = {"seq": ck.header.seq, "full": ck.header.full,
                                    "bytes": len(frame), "at": self.taken_at}
            if ck.header.full:
                self._drop_before(ck.header.seq)
            elif len(self._files()) > COMPACT_AFTER:
                self._compact()
            assert self.held is not None
            return self.held

    def _apply(self, ck: Checkpoint) -> None:
        h = ck.header
        if h.full or self.snap is None:
            image = bytearray(h.size)
            blocks, section = (), 0
        else:
            image, blocks, section = self.snap.image, self.snap.blocks, self.snap.ram_section
        ck.apply(image)
        if not blocks:  # the block layout is in the prefix: read it once per full frame
            blocks, section = parse_prefix(ck.prefix)
        self.snap = Snapshot(ck.prefix, blocks, section, image, ck.tail)
        self.held = Held(h.chain, h.seq, h.size, h.disk_size)

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("*.ckpt"), key=_seq)

    def _drop_before(self, seq: int) -> None:
        for p in self._files():
            if _seq(p) < seq:
                p.unlink(missing_ok=True)

    def _compact(self) -> None:
        assert self.snap is not None and self.held is not None
        full = encode(self.vm, self.held.chain, self.held.seq, 0, self.snap, None,
                      disk=self.disk.full_part() if self.held.disk_size else None)
        path = self.dir / f"{self.held.seq:012d}.ckpt"
        atomic_write(path, full, 0o600)
        self._drop_before(self.held.seq)

    # --- after a restart --------------------------------------------------------------

    def _load(self) -> None:
        files = self._files()
        fulls = []
        for p in files:
            try:
                if accept(p.read_bytes(), self.vm, None).header.full:
                    fulls.append(p)
            except (FrameError, OSError):
                continue
        if not fulls:
            return
        for p in [p for p in files if _seq(p) >= _seq(fulls[-1])]:
            try:
                ck = accept(p.read_bytes(), self.vm, self.held)
            except (FrameError, OSError) as e:
                log.warning("vm %s: %s: %s; keeping checkpoint %s", self.vm, p.name, e,
                            self.held.seq if self.held else "none")
                break
            self._apply(ck)
            self.taken_at = p.stat().st_mtime
        if self.held is not None:  # what comes after the last good one is not a chain
            for p in files:
                if _seq(p) > self.held.seq:
                    p.unlink(missing_ok=True)

    def _recover_disk(self) -> None:
        """After a restart: the disk files must hold the checkpoint the chain ended at;
        when they do not (a crash while applying, a frame dropped at load), they are
        rebuilt from the chain's frames, which hold every cluster."""
        h = self.held
        if h is None or not h.disk_size or self.disk.holds(h.chain, h.seq, h.disk_size):
            return
        log.warning("vm %s: disk files not at checkpoint %d: rebuilding them", self.vm, h.seq)
        at = None
        for p in self._files():  # _load left a verified chain from the last full one
            try:
                ck = accept(p.read_bytes(), self.vm, at)
            except (FrameError, OSError):
                continue  # an incremental before the first full one
            self.disk.apply(ck)
            at = Held(ck.header.chain, ck.header.seq, ck.header.size, ck.header.disk_size)

    # --- resuming -----------------------------------------------------------------------

    def resume_stream(self, path: Path) -> int | None:
        """Write the last good checkpoint as a migration stream to `path`: its sequence,
        or None when nothing good is held."""
        with self._lock:
            if self.snap is None or self.held is None:
                return None
            seq = self.held.seq
            data = to_stream(self.snap)
        path.write_bytes(data)  # read once by QEMU, rewritten on every start: no fsync
        return seq

    def resume(self, stream: Path, disk: Path, base: Path, base_fmt: str) -> int | None:
        """`resume_stream` for a VM with a disk: the stream, and at `disk` a qcow2 over
        `base` holding the disk of the same checkpoint. None (nothing written) when no
        good checkpoint with a disk is held."""
        with self._lock:
            h = self.held
            if self.snap is None or h is None or not h.disk_size \
                    or not self.disk.holds(h.chain, h.seq, h.disk_size):
                return None
            self.disk.write_overlay(disk, base, base_fmt)
            data = to_stream(self.snap)
        stream.write_bytes(data)
        return h.seq

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {"vm": self.vm, "seq": self.held.seq if self.held else None,
                "chain": self.held.chain if self.held else None,
                "chain_start": self.chain_start,
                "age_s": None if self.taken_at is None else round(now - self.taken_at, 1),
                "refused": self.refused, "last_refusal": self.last_refusal,
                "received_bytes": self.received_bytes}
