"""Raspberry Pi 4 and 5 (arm64): MBR, FAT boot partition filled by Debian's raspi-firmware
(firmware, kernel, initrd, device trees, config.txt, cmdline.txt), ext4 root.

Pi 5 needs the bcm2712 device tree, which only the bookworm-backports kernel ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from image.boards import Board
from image.disk import assemble_mbr
from image.errors import BuildError

if TYPE_CHECKING:
    from image.build import BuildContext


@dataclass(frozen=True)
class Pi(Board):
    boot_mount: str = "/boot/firmware"

    def boot_files(self, ctx: BuildContext) -> dict[str, Path]:
        fw = ctx.rootfs / "boot/firmware"
        if not (fw / "config.txt").exists():
            raise BuildError("raspi-firmware did not fill /boot/firmware (config.txt "
                             "missing); check the bootstrap log")
        # The serial console on the second UART (the first is Bluetooth's on Pi trees).
        (fw / "cmdline.txt").write_text("console=ttyS1,115200 console=tty1 root=LABEL=root "
                                        "rw rootwait fsck.repair=yes\n")
        return {p.name: p for p in sorted(fw.iterdir())}

    def assemble(self, ctx: BuildContext, boot: Path, root: Path) -> Path:
        return assemble_mbr(ctx.image, boot, root, pad_pow2=True)


_PI = ("linux-image-arm64", "initramfs-tools", "raspi-firmware", "firmware-brcm80211")
RPI4 = Pi("rpi4", "arm64", _PI, components=("main", "non-free-firmware"))
RPI5 = Pi("rpi5", "arm64", _PI, components=("main", "non-free-firmware"))
