"""Raspberry Pi images: what the Pi firmware reads, checked without booting.

The first tests are pure logic (board specs, cmdline, config.txt parsing) and run by
default. The image tests build rpi4 and rpi5 images (marked `boot` and `slow`: they need
the arm64 bootstrap, 20 to 45 minutes once under qemu-user, then cached) and read the
MBR with sfdisk, the FAT with mtools and the root with debugfs, so no loop mounts.
Run: `.venv/bin/python -m pytest -m "boot and slow" tests/test_rpi_layout.py`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from image import disk
from image.boards import get_board, rpi, x86
from image.errors import BuildError
from image.rootfs import RootfsSpec
from support.pi_image import PI_DTBS, build_pi, fat_names, fat_text, need_arm64_cache

# -- pure logic (default run) ------------------------------------------------------------

def test_both_pis_share_one_backports_bootstrap() -> None:
    a, b = get_board("rpi4").rootfs_spec(), get_board("rpi5").rootfs_spec()
    assert a == b and a.key() == b.key()
    assert a.arch == "arm64" and "non-free-firmware" in a.components
    assert a.extra_suites == ("bookworm-backports",)
    assert "linux-image-arm64/bookworm-backports" in a.packages
    assert "raspi-firmware" in a.packages
    assert a.sources() == ["http://deb.debian.org/debian", "deb http://deb.debian.org/debian "
                           "bookworm-backports main non-free-firmware"]


def test_spec_without_extra_suites_keeps_its_cache_key() -> None:
    # The x86 cache (and every key made before extra_suites existed) stays valid.
    spec = x86.BOARD.rootfs_spec()
    assert spec.extra_suites == () and spec.sources() == [spec.mirror]
    assert spec.key() != RootfsSpec(spec.arch, spec.packages, extra_suites=("x",)).key()


def test_cmdline_finds_root_by_label_on_the_board_serial() -> None:
    assert rpi.RPI4.cmdline().split() == [
        "console=tty1", "console=ttyS1,115200", "root=LABEL=root", "rw", "rootwait",
        "fsck.repair=yes", "net.ifnames=0"]
    assert "console=ttyAMA10,115200" in rpi.RPI5.cmdline()
    assert rpi.RPI4.boot_mount == rpi.RPI5.boot_mount == "/boot/firmware"


CONFIG = """# Do not modify this file!
arm_64bit=1

enable_uart=1
upstream_kernel=1

kernel=vmlinuz-6.12.95+deb12-arm64
# For details on the initramfs directive, see
initramfs initrd.img-6.12.95+deb12-arm64
"""


def test_config_entries_reads_key_values_and_the_initramfs_line() -> None:
    assert rpi.config_entries(CONFIG) == {
        "arm_64bit": "1", "enable_uart": "1", "upstream_kernel": "1",
        "kernel": "vmlinuz-6.12.95+deb12-arm64", "initramfs": "initrd.img-6.12.95+deb12-arm64"}


def _firmware(d: Path, config: str = CONFIG, dtbs: tuple[str, ...] = PI_DTBS) -> Path:
    d.mkdir()
    (d / "config.txt").write_text(config)
    for f in ("vmlinuz-6.12.95+deb12-arm64", "initrd.img-6.12.95+deb12-arm64", *dtbs):
        (d / f).write_bytes(b"x")
    return d


def test_check_firmware_accepts_a_complete_partition(tmp_path: Path) -> None:
    rpi.check_firmware(_firmware(tmp_path / "fw"), rpi.RPI5.dtb)


@pytest.mark.parametrize(("config", "dtbs", "message"), [
    (CONFIG.replace("arm_64bit=1", ""), PI_DTBS, "arm_64bit=1"),
    (CONFIG.replace("kernel=vmlinuz", "kernel=Image"), PI_DTBS, "names kernel 'Image-"),
    (CONFIG.replace("initramfs ", "#"), PI_DTBS, "names initramfs None"),
    (CONFIG, PI_DTBS[:1], "bcm2712-rpi-5-b.dtb missing"),
])
def test_check_firmware_names_what_is_wrong(tmp_path: Path, config: str,
                                            dtbs: tuple[str, ...], message: str) -> None:
    with pytest.raises(BuildError, match=re.escape(message)):
        rpi.check_firmware(_firmware(tmp_path / "fw", config, dtbs), rpi.RPI5.dtb)


# -- built images (boot, slow) -----------------------------------------------------------

@pytest.fixture(scope="module", params=["rpi4", "rpi5"])
def pi_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    need_arm64_cache()
    out = tmp_path_factory.mktemp(request.param)
    return rpi.RPI4 if request.param == "rpi4" else rpi.RPI5, build_pi(request.param, out)


@pytest.mark.boot
@pytest.mark.slow
def test_pi_image_layout(pi_image: tuple[rpi.Pi, Path]) -> None:
    board, img = pi_image
    size = img.stat().st_size
    assert size & (size - 1) == 0, "QEMU's raspi SD card needs a power-of-two size"
    table = disk.partition_table(img)
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True
    assert root["type"] == "83"
    root_ext4 = img.parent / "root.part"
    mib = disk.MIB // disk.SECTOR  # partitions are MiB-aligned
    subprocess.run(["dd", f"if={img}", f"of={root_ext4}", "bs=1M", "conv=sparse",
                    f"skip={int(root['start']) // mib}", f"count={int(root['size']) // mib}",
                    "status=none"], check=True)
    stats = subprocess.run(["dumpe2fs", "-h", str(root_ext4)], capture_output=True,
                           text=True, check=True).stdout
    assert "Filesystem volume name:   root" in stats
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", str(root_ext4)],
                           capture_output=True, text=True, check=True).stdout
    assert "/boot/firmware\tvfat" in fstab, fstab

    names = fat_names(img)
    assert set(PI_DTBS) <= names, sorted(names)
    assert {"start4.elf", "fixup4.dat", "bootcode.bin"} <= names
    cfg = rpi.config_entries(fat_text(img, "config.txt"))
    assert cfg["arm_64bit"] == "1"
    assert cfg["kernel"] in names and cfg["kernel"].startswith("vmlinuz-6.12")
    assert cfg["initramfs"] in names and cfg["initramfs"].startswith("initrd.img-6.12")
    assert fat_text(img, "cmdline.txt").strip() == board.cmdline()
