"""What every board is: a Debian architecture and packages, a FAT boot partition's content
and a disk layout. The boards themselves are the sibling modules (x86.py, rpi.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image.rootfs import CORE_PACKAGES, RootfsSpec


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
    serial: str = "ttyS0"  # the serial console (the last console= argument); rpi.py sets its own

    def rootfs_spec(self, extra: tuple[str, ...] = ()) -> RootfsSpec:
        """`extra`: packages baked in on request (`build.py --preinstall`)."""
        return RootfsSpec(self.arch, CORE_PACKAGES + self.packages + extra,
                          components=self.components, extra_suites=self.extra_suites)

    def boot_files(self, rootfs: Path, work: Path) -> dict[str, Path]:
        """FAT partition content: destination path -> source file. `rootfs` is the
        unpacked root (a board may move boot files out of it), `work` the build's
        scratch directory."""
        raise NotImplementedError

    def assemble(self, image: Path, boot: Path, root: Path) -> Path:
        """Write the disk `image` from the boot and root filesystem images."""
        raise NotImplementedError
