"""x86-64 PCs: GPT, an EFI system partition with systemd-boot, ext4 root (UEFI).

The ESP carries the only copy of the kernel and initramfs: systemd-boot loads them from
there, so copies in the root's /boot (about 40 MB, already compressed, which xz cannot
shrink) would only make the image bigger. Nothing copies a kernel that apt installs on a
node to the ESP, with or without the /boot copies: a new kernel comes with a new image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from image.boards.base import Board
from image.disk import assemble_gpt
from image.errors import BuildError

SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@dataclass(frozen=True)
class X86(Board):
    def boot_files(self, rootfs: Path, work: Path) -> dict[str, Path]:
        kernel, initrd = _move_kernel(rootfs / "boot", work / "esp")
        loader = work / "loader.conf"
        loader.write_text("default mycelium.conf\ntimeout 0\neditor no\n")
        entry = work / "mycelium.conf"
        entry.write_text("title mycelium\nlinux /vmlinuz\ninitrd /initrd.img\n"
                         "options root=LABEL=root rw console=tty1 console=ttyS0,115200 "
                         "quiet systemd.show_status=1\n")
        return {"EFI/BOOT/BOOTX64.EFI": rootfs / SYSTEMD_BOOT,
                "loader/loader.conf": loader, "loader/entries/mycelium.conf": entry,
                "vmlinuz": kernel, "initrd.img": initrd}

    def assemble(self, image: Path, boot: Path, root: Path) -> Path:
        return assemble_gpt(image, boot, root)


def _move_kernel(boot: Path, esp: Path) -> tuple[Path, Path]:
    """Move the newest kernel and its initrd from the rootfs's /boot to `esp` (idempotent:
    a second call finds them there)."""
    kernels = sorted(boot.glob("vmlinuz-*"))
    if not kernels:
        staged = esp / "vmlinuz", esp / "initrd.img"
        if all(p.is_file() for p in staged):
            return staged
        raise BuildError("no kernel in the rootfs (linux-image-amd64 missing?)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.exists():
        raise BuildError(f"no initrd for kernel {version}")
    esp.mkdir(parents=True, exist_ok=True)
    shutil.move(kernels[-1], esp / "vmlinuz")
    shutil.move(initrd, esp / "initrd.img")
    return esp / "vmlinuz", esp / "initrd.img"


# usr-is-merged stands in for usrmerge (and the perl it pulls in): see image/slim.py.
BOARD = X86("x86", "amd64", ("linux-image-amd64", "initramfs-tools", "systemd-boot-efi",
                             "usr-is-merged"))
