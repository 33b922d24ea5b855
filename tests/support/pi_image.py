"""Raspberry Pi images for the layout and boot tests: build one, read its FAT with mtools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image import disk
from image.boards import rpi
from image.rootfs import cache_dir

ROOT = Path(__file__).resolve().parent.parent
# Pi 4 and 5 boot theirs; QEMU's raspi3b boots the Pi 3 one.
PI_DTBS = ("bcm2711-rpi-4-b.dtb", "bcm2712-rpi-5-b.dtb", "bcm2837-rpi-3-b.dtb")


def need_arm64_cache() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, file ownership in the rootfs)")
    spec = rpi.RPI4.rootfs_spec()
    tar = cache_dir() / f"{spec.arch}-{spec.suite}-{spec.key()}.tar"
    if not tar.exists() and not os.environ.get("MYCELIUM_RPI_BOOTSTRAP"):
        pytest.skip(f"arm64 bootstrap {tar} not cached (20 to 45 minutes under qemu-user): "
                    "run `python build.py --board rpi4` once, or set MYCELIUM_RPI_BOOTSTRAP=1")
    for tool, pkg in (("mcopy", "mtools"), ("debugfs", "e2fsprogs"),
                      ("qemu-aarch64-static", "qemu-user-static"),
                      ("qemu-system-aarch64", "qemu-system-arm")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}: apt install {pkg}")


def build_pi(board: str, out: Path, *args: str) -> Path:
    """build.py for a Pi board, without xz (not what these tests check)."""
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "--board", board,
                           "--out", str(out), "--no-xz", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    print(proc.stdout.strip().splitlines()[-1])
    return next(out.glob(f"mycelium-{board}*.img"))


def mtools(img: Path, tool: str, *args: str) -> bytes:
    """An mtools command on the image's FAT partition (`::` paths), no mount needed."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    fat = f"{img}@@{disk.fat_partition_offset(img)}"
    return subprocess.run([tool, "-i", fat, *args], check=True, capture_output=True,
                          env=env).stdout


def fat_names(img: Path) -> set[str]:
    # `mdir -b` prints `::/NAME` per entry, with long names.
    out = mtools(img, "mdir", "-b", "::/").decode()
    return {ln.removeprefix("::/").strip("/") for ln in out.split() if ln.startswith("::/")}


def fat_text(img: Path, name: str) -> str:
    return disk.fat_read(img, name, disk.fat_partition_offset(img)).decode()
