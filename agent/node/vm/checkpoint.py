"""Checkpoint frames: what travels from a VM's primary to its backups, and the backup's
rules for taking one (pure: bytes and images in, verdicts out; no files, no sockets).

A frame is `MAGIC`, a 4-byte header length, a JSON header, then the body:
  header  vm, chain (random per primary run), seq, base (0 = full), size (image bytes),
          prefix/tail lengths, runs, sha256
  body    the stream prefix, zlib(stream tail: device state), then runs of changed pages:
          8-byte offset, 4-byte length of the zlib data, zlib(pages); then, for a VM with
          a disk, its clusters (`disk_size` virtual bytes, `disk_runs` records in the last
          `disk_len` bytes): 8-byte offset, 8-byte length, 4-byte length of the zlib data
          (0: the range reads as zeros), zlib(data)
`sha256` covers the header without it and the whole body, so one flipped bit anywhere is
caught. A full checkpoint (base 0) carries every non-zero page (its diff against an empty
image); an incremental one only the pages that differ from checkpoint `base`. The disk part
is cut in the same pause as the memory (diskckpt.py): a full checkpoint carries every
cluster the VM wrote above its base image, an incremental one the clusters written since
checkpoint `base` (the qcow2 layer closed at this checkpoint).

A backup takes a frame only when (`accept`):
- it decodes completely (nothing missing, nothing extra) and its hash verifies;
- it is for the VM the backup expects;
- it is full, or it continues exactly the chain the backup holds: same chain,
  base = the backup's seq, seq = base + 1, same image size.
Anything else is refused with the reason and changes nothing: the backup keeps its last
good checkpoint and resumes from that one.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from agent.node.vm.stream import PAGE, Snapshot, StreamError, parse_prefix

MAGIC = b"MYCKPT1\n"
HEADER_MAX = 4096
RUN_PAGES = 64  # pages per run at most (one zlib object each)
SCAN = 16 * PAGE  # compare this much at once; pages only inside chunks that differ
LEVEL = 1  # zlib: memory pages compress well even at the fastest level
REC = struct.Struct(">QI")
LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Header:
    vm: str
    chain: str
    seq: int
    base: int  # 0: a full checkpoint
    size: int
    prefix: int
    tail: int
    runs: int
    sha256: str = ""
    disk_size: int = 0  # the VM's virtual disk in bytes; 0: no disk part
    disk_runs: int = 0
    disk_len: int = 0  # bytes of the disk part at the end of the body

    @property
    def full(self) -> bool:
        return self.base == 0

    def fields(self) -> dict[str, object]:
        """The header as written: without the disk fields when there is no disk, so
        frames of diskless VMs are byte for byte what they were before disks."""
        return {k: v for k, v in self.__dict__.items()
                if self.disk_size or k not in DISK_FIELDS}

    def canonical(self) -> bytes:
        d = {k: v for k, v in self.fields().items() if k != "sha256"}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


DISK_FIELDS = ("disk_size", "disk_runs", "disk_len")
CLUSTER = 64 << 10  # disk runs are whole qcow2 clusters (the last may end at the disk's end)
DREC = struct.Struct(">QQI")


@dataclass(frozen=True)
class DiskPart:
    """A VM's disk in a checkpoint: `size` virtual bytes; `runs` of (offset, length,
    data), data None for a range that reads as zeros."""

    size: int
    runs: tuple[tuple[int, int, bytes | None], ...] = ()

    @property
    def bytes(self) -> int:
        return sum(n for _, n, _ in self.runs)


@dataclass(frozen=True)
class Checkpoint:
    header: Header
    prefix: bytes
    tail: bytes
    runs: tuple[tuple[int, bytes], ...]  # (offset, zlib data)
    disk: tuple[tuple[int, int, bytes | None], ...] = ()  # (offset, length, zlib data)

    def disk_data(self) -> Iterator[tuple[int, int, bytes | None]]:
        """The disk runs with their data decompressed (None: zeros)."""
        for off, n, z in self.disk:
            yield off, n, None if z is None else zlib.decompress(z)

    def apply(self, image: bytearray) -> None:
        """Write the changed pages into `image` (the base checkpoint's, or zeros)."""
        for off, z in self.runs:
            data = zlib.decompress(z)
            image[off:off + len(data)] = data


class FrameError(ValueError):
    """A frame that cannot be taken; the message says why."""


def changed_runs(old: bytes | bytearray | memoryview | None,
                 new: bytes | bytearray | memoryview,
                 run_pages: int = RUN_PAGES) -> list[tuple[int, int]]:
    """(offset, length) of the pages of `new` that differ from `old` (None: an image of
    zeros of the same size), consecutive pages merged up to `run_pages`."""
    n = memoryview(new).cast("B")
    o = memoryview(old).cast("B") if old is not None else None
    if o is not None and len(o) != len(n):
        raise ValueError(f"images of {len(o)} and {len(n)} bytes cannot be compared")
    zchunk = bytes(SCAN)
    pages: list[int] = []
    for c in range(0, len(n), SCAN):
        nb = n[c:c + SCAN].tobytes()
        ob = o[c:c + SCAN].tobytes() if o is not None else zchunk[:len(nb)]
        if nb == ob:
            continue
        pages += [c + p for p in range(0, len(nb), PAGE) if nb[p:p + PAGE] != ob[p:p + PAGE]]
    return page_runs(pages, run_pages)


def page_runs(pages: list[int], run_pages: int = RUN_PAGES) -> list[tuple[int, int]]:
    """Page offsets (any order) as (offset, length) runs of consecutive pages, each at
    most `run_pages` long: what changed_runs returns, for pages found some other way
    (stream.parse into the previous image)."""
    runs: list[tuple[int, int]] = []
    for off in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == off and runs[-1][1] < run_pages * PAGE:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
        else:
            runs.append((off, PAGE))
    return runs


def _disk_body(disk: DiskPart) -> list[bytes]:
    out: list[bytes] = []
    for off, n, data in disk.runs:
        if off % CLUSTER or off + n > disk.size or (n % CLUSTER and off + n != disk.size) \
                or (data is not None and len(data) != n):
            raise ValueError(f"disk run at {off} of {n} bytes is not whole clusters")
        z = b"" if data is None else zlib.compress(data, LEVEL)
        out += [DREC.pack(off, n, len(z)), z]
    return out


def encode(vm: str, chain: str, seq: int, base: int, snap: Snapshot,
           previous: bytes | bytearray | None,
           runs: list[tuple[int, int]] | None = None, disk: DiskPart | None = None) -> bytes:
    """The frame for `snap`: against `previous` (the image of checkpoint `base`), or
    full when `previous` is None (then base must be 0). `runs`: changed_runs(previous,
    snap.image) when the caller has it already. `disk`: the VM's disk clusters cut at the
    same instant (all of them above the base image for a full frame)."""
    if (previous is None) != (base == 0):
        raise ValueError("a full checkpoint has base 0, an incremental one a previous image")
    img = memoryview(snap.image)
    body = [snap.prefix, zlib.compress(snap.tail, LEVEL)]
    if runs is None:
        runs = changed_runs(previous, snap.image)
    for off, length in runs:
        z = zlib.compress(img[off:off + length], LEVEL)
        body += [REC.pack(off, len(z)), z]
    dbody = _disk_body(disk) if disk is not None else []
    h = Header(vm, chain, seq, base, snap.size, len(body[0]), len(body[1]), len(runs),
               disk_size=disk.size if disk else 0, disk_runs=len(dbody) // 2,
               disk_len=sum(map(len, dbody)))
    body += dbody
    digest = hashlib.sha256(h.canonical())
    for part in body:
        digest.update(part)
    h = Header(**{**h.__dict__, "sha256": digest.hexdigest()})
    head = json.dumps(h.fields(), sort_keys=True).encode()
    return b"".join([MAGIC, LEN.pack(len(head)), head, *body])


def _header(raw: bytes) -> Header:
    try:
        d = json.loads(raw)
        h = Header(**d)
    except (ValueError, TypeError) as e:
        raise FrameError(f"garbled header: {e}") from e
    ints = (h.seq, h.base, h.size, h.prefix, h.tail, h.runs, h.disk_size, h.disk_runs,
            h.disk_len)
    if not all(type(v) is int and v >= 0 for v in ints) or not isinstance(h.vm, str) \
            or not isinstance(h.chain, str) or not isinstance(h.sha256, str):
        raise FrameError("garbled header: bad field types")
    if h.size % PAGE:
        raise FrameError(f"image size {h.size} is not whole pages")
    if not h.disk_size and (h.disk_runs or h.disk_len):
        raise FrameError("garbled header: disk runs without a disk")
    return h


def _records(body: memoryview, at: int, count: int, size: int) -> Iterator[tuple[int, bytes]]:
    for _ in range(count):
        if at + REC.size > len(body):
            raise FrameError("truncated: a page run is missing")
        off, zlen = REC.unpack(body[at:at + REC.size])
        at += REC.size
        if at + zlen > len(body):
            raise FrameError("truncated: a page run is cut short")
        if off % PAGE or off >= size:
            raise FrameError(f"page run at {off} outside the image")
        yield off, body[at:at + zlen].tobytes()
        at += zlen
    if at != len(body):
        raise FrameError(f"{len(body) - at} bytes after the last page run")


def _disk_records(body: memoryview, count: int, size: int
                  ) -> Iterator[tuple[int, int, bytes | None]]:
    at = 0
    for _ in range(count):
        if at + DREC.size > len(body):
            raise FrameError("truncated: a disk run is missing")
        off, n, zlen = DREC.unpack(body[at:at + DREC.size])
        at += DREC.size
        if at + zlen > len(body):
            raise FrameError("truncated: a disk run is cut short")
        if off % CLUSTER or not n or off + n > size or (n % CLUSTER and off + n != size):
            raise FrameError(f"disk run at {off} of {n} bytes outside the disk's clusters")
        z = body[at:at + zlen].tobytes() if zlen else None
        at += zlen
        if z is not None:
            try:
                if len(zlib.decompress(z)) != n:
                    raise FrameError(f"disk run at {off}: data is not {n} bytes")
            except zlib.error as e:
                raise FrameError(f"disk run at {off}: {e}") from e
        yield off, n, z
    if at != len(body):
        raise FrameError(f"{len(body) - at} bytes after the last disk run")


def decode(frame: bytes) -> Checkpoint:
    """The checkpoint in `frame`, its hash verified; FrameError if anything is off."""
    if not frame.startswith(MAGIC):
        raise FrameError("not a checkpoint frame")
    at = len(MAGIC)
    if len(frame) < at + LEN.size:
        raise FrameError("truncated: no header")
    (hlen,) = LEN.unpack_from(frame, at)
    at += LEN.size
    if hlen > HEADER_MAX or at + hlen > len(frame):
        raise FrameError("truncated or oversized header")
    h = _header(frame[at:at + hlen])
    body = memoryview(frame)[at + hlen:]
    digest = hashlib.sha256(h.canonical())
    digest.update(body)
    if digest.hexdigest() != h.sha256:
        raise FrameError("sha256 mismatch: corrupted or truncated in transit")
    if h.prefix + h.tail + h.disk_len > len(body):
        raise FrameError("truncated: stream prefix, tail or disk part missing")
    disk = tuple(_disk_records(body[len(body) - h.disk_len:], h.disk_runs, h.disk_size))
    body = body[:len(body) - h.disk_len]
    prefix = body[:h.prefix].tobytes()
    try:
        tail = zlib.decompress(body[h.prefix:h.prefix + h.tail])
    except zlib.error as e:
        raise FrameError(f"device state: {e}") from e
    try:
        blocks, _ = parse_prefix(prefix)
    except StreamError as e:
        raise FrameError(f"stream prefix: {e}") from e
    if sum(b.size for b in blocks) != h.size:
        raise FrameError(f"stream prefix declares other RAM than the {h.size}-byte image")
    runs = tuple(_records(body, h.prefix + h.tail, h.runs, h.size))
    for off, z in runs:
        try:
            data = zlib.decompress(z)
        except zlib.error as e:
            raise FrameError(f"page run at {off}: {e}") from e
        if len(data) % PAGE or off + len(data) > h.size:
            raise FrameError(f"page run at {off} of {len(data)} bytes overruns the image")
    return Checkpoint(h, prefix, tail, runs, disk)


@dataclass(frozen=True)
class Held:
    """What a backup holds for one VM: the last good checkpoint's place in its chain."""

    chain: str
    seq: int
    size: int
    disk_size: int = 0


def accept(frame: bytes, vm: str, held: Held | None) -> Checkpoint:
    """The checkpoint if the backup holding `held` may apply it, else FrameError."""
    ck = decode(frame)
    h = ck.header
    if h.vm != vm:
        raise FrameError(f"a checkpoint of VM {h.vm!r}, not {vm!r}")
    if h.full:
        return ck
    if held is None:
        raise FrameError("incremental checkpoint but nothing held: a full one is needed")
    if h.chain != held.chain:
        raise FrameError("incremental checkpoint of another chain: a full one is needed")
    if h.base != held.seq or h.seq != h.base + 1:
        raise FrameError(f"checkpoint {h.seq} on base {h.base}, but {held.seq} is held: "
                         "a full one is needed")
    if h.size != held.size:
        raise FrameError(f"image of {h.size} bytes, {held.size} held")
    if h.disk_size != held.disk_size:
        raise FrameError(f"disk of {h.disk_size} bytes, {held.disk_size} held")
    return ck


# --- a frame split across several connections ---------------------------------------------

PART_MAGIC = b"MYCPART1"
PART = struct.Struct(">16sHH")  # set id, index, count
PARTS_MAX = 64
SETS_KEPT = 2  # incomplete sets a backup keeps per VM (a newer one evicts the oldest)


def split(frame: bytes, n: int, set_id: bytes) -> list[bytes]:
    """`frame` in `n` parts of about equal size, to send over `n` connections at once."""
    n = max(1, min(n, PARTS_MAX, len(frame)))
    size = -(-len(frame) // n)
    return [PART_MAGIC + PART.pack(set_id.ljust(16, b"\0")[:16], i, n)
            + frame[i * size:(i + 1) * size] for i in range(n)]


def is_part(data: bytes) -> bool:
    return data.startswith(PART_MAGIC)


class Reassembler:
    """Parts back into a frame. The frame's own SHA-256 (checked by `accept`) covers the
    parts: a missing, doubled or altered part makes a frame that is refused."""

    def __init__(self) -> None:
        self._sets: dict[bytes, dict[int, bytes]] = {}

    def add(self, data: bytes) -> bytes | None:
        """The whole frame once its last part came, else None."""
        at = len(PART_MAGIC)
        if len(data) < at + PART.size:
            raise FrameError("truncated: a frame part without its header")
        set_id, i, n = PART.unpack_from(data, at)
        if not 0 < n <= PARTS_MAX or i >= n:
            raise FrameError(f"frame part {i} of {n}")
        parts = self._sets.setdefault(set_id, {})
        parts[i] = data[at + PART.size:]
        while len(self._sets) > SETS_KEPT:  # an abandoned set: the oldest goes
            del self._sets[next(iter(self._sets))]
        if len(parts) < n:
            return None
        del self._sets[set_id]
        return b"".join(parts[k] for k in range(n))
