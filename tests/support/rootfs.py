"""The Debian root filesystem the recipe and image tests share (cached mmdebstrap)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from image.boards import x86
from image.rootfs import bootstrap, unpack
from image.wheels import build_wheelhouse


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, file ownership in the rootfs)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("needs mmdebstrap: sh .ci/install --test")


def fresh_rootfs(dest: Path) -> Path:
    """An unpacked copy of the cached x86 node rootfs (built on first use: about 1-2 min)."""
    need_root()
    return unpack(bootstrap(x86.BOARD.rootfs_spec()), dest)


def wheels(dest: Path) -> Path:
    return build_wheelhouse(dest, "amd64")
