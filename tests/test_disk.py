"""Disk assembly without loop mounts: filesystems and tables are checked by reading them back.

Everything is read with e2fsprogs' debugfs, mtools and sfdisk, the same user-space tools that
wrote it, so these tests need neither loop devices nor mounts and run in a second or two.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from image import disk
from image.errors import BuildError

GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ALIGN = disk.MIB // disk.SECTOR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership needs root")


def _debugfs(img: Path, request: str) -> str:
    r = subprocess.run(["debugfs", "-R", request, str(img)], capture_output=True, text=True,
                       check=True)
    return r.stdout


def _mtype(img: Path, path: str) -> bytes:
    return subprocess.run(["mcopy", "-i", str(img), f"::/{path}", "-"], capture_output=True,
                          check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def _slice(img: Path, start_sectors: int, length: int) -> bytes:
    with img.open("rb") as f:
        f.seek(start_sectors * disk.SECTOR)
        return f.read(length)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rootfs")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("node-1\n")
    (root / "home/agent").mkdir(parents=True)
    secret = root / "home/agent/key"
    secret.write_bytes(b"k" * 100)
    secret.chmod(0o600)
    os.chown(secret, 1234, 1234)
    os.chown(root / "home/agent", 1234, 1234)
    (root / "bin").mkdir()
    (root / "bin/blob").write_bytes(os.urandom(2 * disk.MIB))
    (root / "hostname").symlink_to("/etc/hostname")
    return root


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("boot")
    (src / "EFI/BOOT").mkdir(parents=True)
    (src / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 1000)
    (src / "config.txt").write_text("arm_64bit=1\n")
    return src


@pytest.fixture(scope="module")
def images(tree: Path, boot: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("images")
    root = disk.make_ext4(tree, out / "root.ext4", disk.ext4_size_mb(tree))
    esp = disk.make_vfat({"EFI/BOOT/BOOTX64.EFI": boot / "EFI/BOOT/BOOTX64.EFI",
                          "loader/entries/node.conf": tree / "etc/hostname"},
                         out / "esp.vfat", 8, "ESP")
    fat = disk.make_vfat(boot, out / "boot.vfat", 8, "bootfs")
    return {"root": root, "esp": esp, "fat": fat,
            "gpt": disk.assemble_gpt(out / "x86.img", esp, root),
            "mbr": disk.assemble_mbr(out / "pi.img", fat, root, pad_pow2=True),
            "mbr_unpadded": disk.assemble_mbr(out / "pi-raw.img", fat, root)}


def test_ext4_size_leaves_headroom(tree: Path) -> None:
    assert disk.ext4_size_mb(tree) >= 2 + 64
    assert disk.ext4_size_mb(tree) % 4 == 0


def test_ext4_keeps_content_label_owner_mode_and_symlinks(images: dict[str, Path]) -> None:
    img = images["root"]
    assert _debugfs(img, "cat /etc/hostname") == "node-1\n"
    stat = _debugfs(img, "stat /home/agent/key")
    assert re.search(r"User:\s+1234\s+Group:\s+1234", stat)
    assert re.search(r"Mode:\s+0600", stat)
    link = _debugfs(img, "stat /hostname")
    assert "Type: symlink" in link and '"/etc/hostname"' in link
    label = subprocess.run(["e2label", str(img)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "root"


def test_vfat_from_map_creates_parent_dirs(images: dict[str, Path], boot: Path) -> None:
    esp = images["esp"]
    assert _mtype(esp, "EFI/BOOT/BOOTX64.EFI") == (boot / "EFI/BOOT/BOOTX64.EFI").read_bytes()
    assert _mtype(esp, "loader/entries/node.conf") == b"node-1\n"


def test_vfat_from_dir_copies_tree(images: dict[str, Path]) -> None:
    fat = images["fat"]
    assert _mtype(fat, "config.txt") == b"arm_64bit=1\n"
    assert _mtype(fat, "EFI/BOOT/BOOTX64.EFI").startswith(b"MZ")
    info = subprocess.run(["minfo", "-i", str(fat), "::"], capture_output=True, text=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True).stdout
    assert "BOOTFS" in info


def _check_aligned_in_order(parts: list[dict], sizes: list[int]) -> None:
    end = 0
    for p, size in zip(parts, sizes, strict=True):
        assert p["start"] % ALIGN == 0 and p["size"] % ALIGN == 0
        assert p["start"] >= end
        assert p["size"] * disk.SECTOR >= size
        end = p["start"] + p["size"]


def test_gpt_layout(images: dict[str, Path]) -> None:
    img, esp, root = images["gpt"], images["esp"], images["root"]
    table = disk.partition_table(img)
    assert table["label"] == "gpt"
    parts = disk.partitions(img)
    assert [p["type"] for p in parts] == [GPT_ESP, GPT_LINUX]
    assert [p["name"] for p in parts] == ["esp", "root"]
    assert parts[0]["start"] == ALIGN
    _check_aligned_in_order(parts, [esp.stat().st_size, root.stat().st_size])
    assert parts[-1]["start"] + parts[-1]["size"] <= table["lastlba"] + 1
    for p, src in zip(parts, (esp, root), strict=True):
        assert _slice(img, p["start"], src.stat().st_size) == src.read_bytes()


def test_mbr_layout_bootable_fat_and_pow2(images: dict[str, Path]) -> None:
    img, fat, root = images["mbr"], images["fat"], images["root"]
    assert disk.partition_table(img)["label"] == "dos"
    parts = disk.partitions(img)
    assert [p["type"] for p in parts] == ["c", "83"]
    assert [p.get("bootable", False) for p in parts] == [True, False]
    _check_aligned_in_order(parts, [fat.stat().st_size, root.stat().st_size])
    size = img.stat().st_size
    assert size & (size - 1) == 0
    assert size >= (parts[-1]["start"] + parts[-1]["size"]) * disk.SECTOR
    assert img.stat().st_blocks * 512 < size, "padding should stay sparse"
    for p, src in zip(parts, (fat, root), strict=True):
        assert _slice(img, p["start"], src.stat().st_size) == src.read_bytes()


def test_mbr_without_padding_ends_at_last_partition(images: dict[str, Path]) -> None:
    img = images["mbr_unpadded"]
    last = disk.partitions(img)[-1]
    assert img.stat().st_size == (last["start"] + last["size"]) * disk.SECTOR


def test_rootfs_larger_than_size_is_a_clear_error(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.ext4"
    with pytest.raises(BuildError, match=r"needs \d+ MiB but the ext4 image is 1 MiB"):
        disk.make_ext4(tree, out, 1)
    # du says it fits, but not with the filesystem's own metadata: mke2fs's failure is reworded
    with pytest.raises(BuildError, match="does not fit in a 3 MiB ext4 image.*ext4_size_mb"):
        disk.make_ext4(tree, out, 3)
    assert not out.exists()


def test_boot_files_larger_than_fat_is_a_clear_error(tmp_path: Path) -> None:
    big = tmp_path / "kernel"
    big.write_bytes(b"\0" * (3 * disk.MIB))
    with pytest.raises(BuildError, match="do not fit in a 2 MiB FAT image"):
        disk.make_vfat({"vmlinuz": big}, tmp_path / "boot.vfat", 2, "boot")


def test_missing_partition_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="missing; build it first"):
        disk.assemble_gpt(tmp_path / "x.img", tmp_path / "esp", tmp_path / "root")


def test_files_are_read_back_from_partitions_inside_a_disk(images: dict[str, Path],
                                                            tmp_path: Path) -> None:
    img = tmp_path / "x86.img"
    img.write_bytes(images["gpt"].read_bytes())
    root_at, fat_at = disk.root_partition_offset(img), disk.fat_partition_offset(img)
    assert fat_at == disk.MIB and root_at > fat_at
    assert disk.ext4_read(img, "/home/agent/key", root_at) == (b"k" * 100, 0o600)
    with pytest.raises(BuildError, match="not a regular file"):
        disk.ext4_read(img, "/nonexistent", root_at)
    src = tmp_path / "folder"
    src.mkdir()
    (src / "node-name").write_text("n1\n")
    disk.replace_fat_dir(img, fat_at, src, "mycelium")
    disk.replace_fat_dir(img, fat_at, src, "mycelium")  # again: replaced, not nested
    assert disk.fat_read(img, "mycelium/node-name", fat_at) == b"n1\n"
    with pytest.raises(BuildError, match="from the FAT filesystem of .*: mtype failed"):
        disk.fat_read(img, "mycelium/mycelium/node-name", fat_at)
    assert disk.fat_read(img, "EFI/BOOT/BOOTX64.EFI", fat_at).startswith(b"MZ")
