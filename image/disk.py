"""Disk images assembled from files, without loop devices or mounts.

Loop mounts need privileges and a free loop device, neither of which a container build or a
CI runner reliably has. Every filesystem here is therefore written straight into a regular
file (`mke2fs -d`, `mkfs.vfat -C` + mtools), and the disk is a sparse file with a partition
table written by `sfdisk` into which each filesystem image is copied with `dd`. The same
code path serves the x86 GPT/ESP layout and the Raspberry Pi MBR/FAT layout.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from image.errors import BuildError

MIB = 1024 * 1024
SECTOR = 512
# Partitions start on 1 MiB boundaries: what every partitioning tool does, and what keeps
# erase blocks of SD cards and 4K sectors of disks aligned.
ALIGN_MIB = 1

_PACKAGE_OF = {
    "mke2fs": "e2fsprogs", "debugfs": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "mmd": "mtools", "mcopy": "mtools", "sfdisk": "fdisk", "dd": "coreutils",
    "truncate": "coreutils", "du": "coreutils", "mdeltree": "mtools", "mdir": "mtools",
}
# Partition types a boot (FAT) partition carries: the GPT ESP, and MBR FAT32/FAT16 LBA.
FAT_TYPES = ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "c", "b", "e", "ef")


def _run(cmd: Sequence[str], what: str, stdin: str | None = None) -> str:
    """Run a tool and turn any failure into one line that names the step and the cause."""
    data = _run_bytes(cmd, what, stdin.encode() if stdin is not None else None)
    return data.decode(errors="replace")


def _run_bytes(cmd: Sequence[str], what: str, stdin: bytes | None = None) -> bytes:
    """`_run` for tools whose output is file content, not text (mtype)."""
    tool = cmd[0]
    if shutil.which(tool) is None:
        raise BuildError(f"{what}: {tool} not found; install {_PACKAGE_OF.get(tool, tool)}")
    # mtools refuses images whose FAT geometry looks odd to it unless told not to check.
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
    try:
        r = subprocess.run(list(cmd), input=stdin, capture_output=True, env=env, check=False)
    except OSError as e:
        raise BuildError(f"{what}: cannot run {tool}: {e}") from e
    if r.returncode != 0:
        out = (r.stderr or r.stdout).decode(errors="replace")
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        raise BuildError(f"{what}: {tool} failed: {lines[-1] if lines else f'exit {r.returncode}'}")
    return r.stdout


def _ceil_mib(nbytes: int) -> int:
    return max(1, -(-nbytes // MIB))


def du_kib(tree: Path) -> int:
    """Allocated size of a tree as the host filesystem counts it, without crossing mounts."""
    out = _run(["du", "-skx", str(tree)], f"measuring {tree}")
    return int(out.split()[0])


def ext4_size_mb(tree: Path, headroom: float = 0.25, extra_mb: int = 64) -> int:
    """A size that fits `tree` with room to spare, rounded up to 4 MiB.

    Blocks are counted from `du` and inodes from the number of entries, because a Debian
    rootfs of many small files runs out of inodes before it runs out of blocks at mke2fs's
    default ratio (one inode per 16 KiB). The headroom also covers the journal and metadata.
    """
    if not tree.is_dir():
        raise BuildError(f"rootfs {tree} is not a directory; bootstrap it first")
    data_mb = du_kib(tree) / 1024
    entries = sum(1 + len(dirs) + len(files) for _, dirs, files in os.walk(tree))
    inode_mb = entries * 16384 * 1.5 / MIB
    size = max(data_mb, inode_mb) * (1 + headroom) + extra_mb
    return int(math.ceil(size / 4) * 4)


def make_ext4(rootfs_dir: Path, out: Path, size_mb: int, label: str = "root") -> Path:
    """Write `rootfs_dir` into a new ext4 image, keeping owners, modes and symlinks.

    Run as root: mke2fs copies the uid/gid it sees, so the tree must already carry the
    ownership the node needs (a tree made by an unprivileged user would not).
    """
    if not rootfs_dir.is_dir():
        raise BuildError(f"rootfs {rootfs_dir} is not a directory; bootstrap it first")
    if len(label.encode()) > 16:
        raise BuildError(f"ext4 label {label!r} is longer than 16 bytes; shorten it")
    used_mb = du_kib(rootfs_dir) / 1024
    if used_mb > size_mb:
        raise BuildError(f"rootfs {rootfs_dir} needs {used_mb:.0f} MiB but the ext4 image is "
                         f"{size_mb} MiB; pass a size from ext4_size_mb()")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", str(rootfs_dir),
              str(out), f"{size_mb}M"], f"writing ext4 image {out.name}")
    except BuildError as e:
        out.unlink(missing_ok=True)
        if "allocate" in str(e) or "No space" in str(e) or "inode" in str(e).lower():
            raise BuildError(f"rootfs {rootfs_dir} does not fit in a {size_mb} MiB ext4 image "
                             f"({e}); pass a size from ext4_size_mb()") from e
        raise
    return out


def _fat_path(dest: str) -> str:
    return "::/" + dest.strip("/")


def make_vfat(files: Mapping[str, Path] | Path, out: Path, size_mb: int,
              label: str) -> Path:
    """Write a FAT image (ESP or Pi boot partition) from a directory or a `{dest: source}` map.

    A map lets a board pick individual files from several places (systemd-boot from the
    host package, kernel from the rootfs) without staging a directory first. A source that
    is a directory is copied recursively under its destination name.
    """
    if not label or len(label) > 11 or not label.isascii():
        raise BuildError(f"FAT label {label!r} must be 1-11 ASCII characters")
    if isinstance(files, Path):
        if not files.is_dir():
            raise BuildError(f"boot files {files} is not a directory")
        items = {p.name: p for p in sorted(files.iterdir())}
    else:
        items = dict(files)
    for dest, src in items.items():
        if not src.exists():
            raise BuildError(f"boot file {src} (for {dest}) does not exist; build it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # mkfs.vfat -C refuses to overwrite
    what = f"writing FAT image {out.name}"
    _run(["mkfs.vfat", "-C", "-n", label.upper(), str(out), str(size_mb * 1024)], what)
    try:
        parents = sorted({"/".join(d.strip("/").split("/")[:i])
                          for d in items for i in range(1, len(d.strip("/").split("/")))})
        if parents:
            _run(["mmd", "-i", str(out), *(_fat_path(d) for d in parents)], what)
        for dest, src in items.items():
            _run(["mcopy", "-i", str(out), "-s", "-m", "-Q", "-D", "o", str(src),
                  _fat_path(dest)], f"{what}: copying {dest}")
    except BuildError as e:
        out.unlink(missing_ok=True)
        if "full" in str(e).lower():
            raise BuildError(f"boot files do not fit in a {size_mb} MiB FAT image ({e}); "
                             f"give it a larger size") from e
        raise
    return out


@dataclass(frozen=True)
class Part:
    """One partition to place on a disk: its filesystem image and table attributes."""

    image: Path
    type: str  # an sfdisk type: alias (uefi, linux) for GPT, hex id (c, 83) for MBR
    name: str = ""  # GPT partition name; ignored on MBR
    bootable: bool = False  # MBR active flag; the Pi firmware ignores it, some BIOSes do not

    @property
    def size_mib(self) -> int:
        return _ceil_mib(self.image.stat().st_size)


@dataclass(frozen=True)
class Layout:
    """Where each partition lands, in MiB, so the sfdisk script and dd offsets agree."""

    label: str  # "gpt" or "dos"
    parts: tuple[Part, ...]
    starts_mib: tuple[int, ...]
    total_mib: int

    @classmethod
    def plan(cls, label: str, parts: Sequence[Part], pad_pow2: bool = False) -> Layout:
        starts, at = [], ALIGN_MIB
        for p in parts:
            if not p.image.is_file():
                raise BuildError(f"partition image {p.image} is missing; build it first")
            starts.append(at)
            at += p.size_mib
        # GPT keeps a backup header in the last 33 sectors; a whole MiB keeps the end aligned.
        total = at + (ALIGN_MIB if label == "gpt" else 0)
        if pad_pow2:
            total = 1 << (total - 1).bit_length()
        return cls(label, tuple(parts), tuple(starts), total)

    def sfdisk_script(self) -> str:
        lines = [f"label: {self.label}", "unit: sectors", ""]
        per_mib = MIB // SECTOR
        for p, start in zip(self.parts, self.starts_mib, strict=True):
            attrs = [f"start={start * per_mib}", f"size={p.size_mib * per_mib}", f"type={p.type}"]
            if self.label == "gpt" and p.name:
                attrs.append(f'name="{p.name}"')
            if self.label == "dos" and p.bootable:
                attrs.append("bootable")
            lines.append(", ".join(attrs))
        return "\n".join(lines) + "\n"


def assemble(out: Path, layout: Layout) -> Path:
    """Write the partition table, then copy each filesystem image to its offset, sparsely."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    what = f"assembling disk {out.name}"
    _run(["truncate", "-s", f"{layout.total_mib}M", str(out)], what)
    try:
        _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
             f"{what}: partition table", stdin=layout.sfdisk_script())
        for p, start in zip(layout.parts, layout.starts_mib, strict=True):
            _run(["dd", f"if={p.image}", f"of={out}", "bs=1M", f"seek={start}",
                  "conv=notrunc,sparse", "status=none"], f"{what}: copying {p.image.name}")
    except BuildError:
        out.unlink(missing_ok=True)
        raise
    return out


def assemble_gpt(out: Path, esp: Path, root: Path) -> Path:
    """UEFI disk: EFI system partition first, then the Linux root (found by LABEL=root)."""
    return assemble(out, Layout.plan("gpt", [Part(esp, "uefi", "esp"),
                                             Part(root, "linux", "root")]))


def assemble_mbr(out: Path, boot: Path, root: Path, pad_pow2: bool = False) -> Path:
    """Raspberry Pi disk: the firmware reads the first FAT (type c) partition of an MBR.

    `pad_pow2` is for QEMU's raspi machines, whose SD card model rejects other sizes.
    """
    return assemble(out, Layout.plan("dos", [Part(boot, "c", bootable=True),
                                             Part(root, "83")], pad_pow2=pad_pow2))


def partition_table(img: Path) -> dict:
    """The table as `sfdisk --json` reports it: label, id, sectorsize and partitions."""
    out = _run(["sfdisk", "--json", str(img)], f"reading partition table of {img}")
    try:
        return json.loads(out)["partitiontable"]
    except (ValueError, KeyError) as e:
        raise BuildError(f"reading partition table of {img}: unexpected sfdisk output") from e


def partitions(img: Path) -> list[dict]:
    """Partitions with start/size in sectors, type, and bootable/name where set."""
    return list(partition_table(img).get("partitions", []))


def fat_partition_offset(img: Path) -> int:
    """Byte offset of the image's boot (FAT) partition: the ESP on x86, the Pi's first FAT."""
    for p in partitions(img):
        if str(p.get("type", "")).upper() in (t.upper() for t in FAT_TYPES):
            return int(p["start"]) * SECTOR
    raise BuildError(f"{img} has no FAT boot partition (EFI system or type c); is it a "
                     "mycelium image?")


def replace_fat_dir(img: Path, offset: int, src: Path, name: str) -> None:
    """Copy directory `src` to ::/`name` of the FAT filesystem at `offset` in `img`,
    replacing an existing one: mtools addresses a partition inside a disk as IMG@@OFFSET."""
    fat = f"{img}@@{offset}"
    what = f"writing {name}/ into the boot partition of {img.name}"
    _run(["mdir", "-i", fat, "-b", "::/"], f"{what}: reading the FAT")
    try:
        _run(["mdeltree", "-i", fat, _fat_path(name)], what)
    except BuildError as e:
        if "not found" not in str(e).lower():
            raise
    try:
        _run(["mcopy", "-i", fat, "-s", "-m", "-Q", str(src), _fat_path(name)], what)
    except BuildError as e:
        if "full" in str(e).lower():
            raise BuildError(f"{what}: the boot partition is full; remove files from it or "
                             "rebuild the image") from e
        raise


def fat_read(img: Path, path: str, offset: int = 0) -> bytes:
    """A file of a FAT image (or of the FAT partition at `offset` in a disk image)."""
    fat = f"{img}@@{offset}" if offset else str(img)
    return _run_bytes(["mtype", "-i", fat, _fat_path(path)],
                      f"reading {path} from the FAT filesystem of {img.name}")


def root_partition_offset(img: Path) -> int:
    """Byte offset of the last partition: the ext4 root on every board."""
    parts = partitions(img)
    if not parts:
        raise BuildError(f"{img} has no partitions")
    return int(parts[-1]["start"]) * SECTOR


def ext4_read(img: Path, path: str, offset: int = 0) -> tuple[bytes, int]:
    """(content, mode) of a regular file in an ext4 image, or the one at `offset` in a disk
    image (debugfs reads `IMG?offset=N`)."""
    fs = f"{img}?offset={offset}" if offset else str(img)
    stat = _run(["debugfs", "-R", f"stat {path}", fs], f"reading {path} from {img.name}")
    m = re.search(r"Mode:\s+(0?[0-7]{3,4})", stat)
    if m is None or "Type: regular" not in stat:
        raise BuildError(f"{path} is not a regular file in the ext4 filesystem of {img}")
    r = subprocess.run(["debugfs", "-R", f"cat {path}", fs], capture_output=True, check=False)
    if r.returncode != 0:
        raise BuildError(f"cannot read {path} from {img}")
    return r.stdout, int(m.group(1), 8)
