"""x86-64 PCs: GPT, an EFI system partition with systemd-boot, ext4 root (UEFI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from image.boards import Board
from image.disk import assemble_gpt
from image.errors import BuildError

if TYPE_CHECKING:
    from image.build import BuildContext

SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@dataclass(frozen=True)
class X86(Board):
    def boot_files(self, ctx: BuildContext) -> dict[str, Path]:
        root = ctx.rootfs
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise BuildError("no kernel in the rootfs (linux-image-amd64 missing?)")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        initrd = root / "boot" / f"initrd.img-{version}"
        if not initrd.exists():
            raise BuildError(f"no initrd for kernel {version}")
        loader = ctx.work / "loader.conf"
        loader.write_text("default mycelium.conf\ntimeout 0\neditor no\n")
        entry = ctx.work / "mycelium.conf"
        entry.write_text("title mycelium\nlinux /vmlinuz\ninitrd /initrd.img\n"
                         "options root=LABEL=root rw console=tty1 console=ttyS0,115200 "
                         "quiet systemd.show_status=1\n")
        return {"EFI/BOOT/BOOTX64.EFI": root / SYSTEMD_BOOT,
                "loader/loader.conf": loader, "loader/entries/mycelium.conf": entry,
                "vmlinuz": kernels[-1], "initrd.img": initrd}

    def assemble(self, ctx: BuildContext, boot: Path, root: Path) -> Path:
        return assemble_gpt(ctx.image, boot, root)


BOARD = X86("x86", "amd64", ("linux-image-amd64", "initramfs-tools", "systemd-boot-efi"))
