"""Boards: what differs between machines (kernel, firmware, boot files, partition table).

Each board is one module with a `BOARD` object; adding a board touches one file and the
registry below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from image.rootfs import CORE_PACKAGES, RootfsSpec

if TYPE_CHECKING:
    from image.build import BuildContext


@dataclass(frozen=True)
class Board:
    name: str
    arch: str  # Debian architecture
    packages: tuple[str, ...]  # on top of CORE_PACKAGES: kernel, firmware, boot loader
    components: tuple[str, ...] = ("main",)
    extra_suites: tuple[str, ...] = ()  # e.g. bookworm-backports, for a newer kernel
    boot_label: str = "MYCBOOT"
    # where the FAT partition is mounted on the node (first-boot config lives there)
    boot_mount: str = "/boot/efi"
    boot_min_mb: int = 0  # smallest FAT partition, whatever its content (see rpi.py)

    def rootfs_spec(self) -> RootfsSpec:
        return RootfsSpec(self.arch, CORE_PACKAGES + self.packages,
                          components=self.components, extra_suites=self.extra_suites)

    def boot_files(self, ctx: BuildContext) -> dict[str, Path]:
        """FAT partition content: destination path -> source file."""
        raise NotImplementedError

    def assemble(self, ctx: BuildContext, boot: Path, root: Path) -> Path:
        raise NotImplementedError


def get_board(name: str) -> Board:
    from image.boards import rpi, x86

    boards = {"x86": x86.BOARD, "rpi4": rpi.RPI4, "rpi5": rpi.RPI5}
    if name not in boards:
        raise KeyError(f"unknown board {name!r}; choose one of {', '.join(boards)}")
    return boards[name]
