"""Raspberry Pi 4 and 5 (arm64): MBR, FAT boot partition filled by Debian's raspi-firmware
(firmware, kernel, initrd, device trees, config.txt, cmdline.txt), ext4 root.

Pi 5 needs the bcm2712 device tree, which only the bookworm-backports kernel (6.12) ships;
both boards take that kernel so they share one arm64 bootstrap (20 to 45 minutes under
qemu-user). raspi-firmware's kernel hook copies every bcm*.dtb of the newest kernel into
/boot/firmware and writes config.txt (arm_64bit, kernel=, initramfs) for it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from image.boards.base import Board
from image.disk import assemble_mbr
from image.errors import BuildError

BACKPORTS = "bookworm-backports"


@dataclass(frozen=True)
class Pi(Board):
    boot_mount: str = "/boot/firmware"
    # A kernel upgrade writes the new kernel and initrd (about 75 MB) before it deletes the
    # old ones, so the FAT needs room for two.
    boot_min_mb: int = 256
    # Upstream Pi 3/4 trees give the PL011 to Bluetooth and GPIO 14/15 to the mini UART
    # (ttyS1); Pi 5's debug connector is uart10 (ttyAMA10).
    serial: str = "ttyS1"
    dtb: str = ""  # the device tree the board's firmware picks; the build checks it is there

    def cmdline(self) -> str:
        return (f"console=tty1 console={self.serial},115200 root=LABEL=root rw rootwait "
                "fsck.repair=yes net.ifnames=0")

    def boot_files(self, rootfs: Path, work: Path) -> dict[str, Path]:
        fw = rootfs / "boot/firmware"
        if not (fw / "config.txt").exists():
            raise BuildError("raspi-firmware did not fill /boot/firmware (config.txt "
                             "missing); check the bootstrap log")
        check_firmware(fw, self.dtb)
        # raspi-firmware wrote root=<the build host's root>: ours is found by label.
        (fw / "cmdline.txt").write_text(self.cmdline() + "\n")
        # The FAT is mounted over /boot/firmware on the node: copies left in the root would
        # be hidden (about 100 MB). The mount point stays; /boot keeps the kernel and initrd
        # that raspi-firmware's hook copies again on a kernel upgrade.
        moved = work / "firmware"
        shutil.rmtree(moved, ignore_errors=True)
        moved.mkdir(parents=True)
        for f in sorted(fw.iterdir()):
            shutil.move(f, moved / f.name)
        return {p.name: p for p in sorted(moved.iterdir())}

    def assemble(self, image: Path, boot: Path, root: Path) -> Path:
        return assemble_mbr(image, boot, root, pad_pow2=True)


def config_entries(config_txt: str) -> dict[str, str]:
    """`key=value` and `initramfs FILE ...` lines of a config.txt, comments dropped."""
    out: dict[str, str] = {}
    for line in config_txt.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
        elif line.startswith("initramfs "):
            out["initramfs"] = line.split()[1]
    return out


def check_firmware(fw: Path, dtb: str) -> None:
    """The firmware boots what config.txt names: make sure each named file is there."""
    cfg = config_entries((fw / "config.txt").read_text())
    if cfg.get("arm_64bit") != "1":
        raise BuildError(f"{fw}/config.txt lacks arm_64bit=1: is raspi-firmware for arm64?")
    for key in ("kernel", "initramfs"):
        if not cfg.get(key) or not (fw / cfg[key]).is_file():
            raise BuildError(f"{fw}/config.txt names {key} {cfg.get(key)!r}, which is not "
                             "in /boot/firmware; reinstall raspi-firmware after the kernel")
    if dtb and not (fw / dtb).is_file():
        raise BuildError(f"{dtb} missing from /boot/firmware: the kernel is too old for "
                         f"this board (take linux-image-arm64 from {BACKPORTS})")


# No wireless firmware: the image drops the wireless drivers (image/slim.py).
_PI = (f"linux-image-arm64/{BACKPORTS}", "initramfs-tools", "raspi-firmware")
_COMPONENTS = ("main", "non-free-firmware")
RPI4 = Pi("rpi4", "arm64", _PI, _COMPONENTS, (BACKPORTS,), dtb="bcm2711-rpi-4-b.dtb")
RPI5 = Pi("rpi5", "arm64", _PI, _COMPONENTS, (BACKPORTS,), serial="ttyAMA10",
          dtb="bcm2712-rpi-5-b.dtb")
