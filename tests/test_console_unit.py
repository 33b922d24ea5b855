"""The console dashboard's units, installed by the image_boot recipe into a real Debian
rootfs (the cached mmdebstrap tree, as an image build does): one instance per console,
enabled, with the login prompt it replaces masked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from recipes import deploys
from recipes.params import BootParams
from recipes.run import run
from support.rootfs import fresh_rootfs

UNITS = Path("etc/systemd/system")


def test_image_boot_installs_a_dashboard_on_tty1_and_the_serial_console(tmp_path):
    root = fresh_rootfs(tmp_path / "root")
    assert run(f"@chroot{root}", [(deploys.image_boot, (BootParams(),))]).ok
    assert not (root / UNITS / "mycelium-console@.service").exists()  # none unless asked
    assert not (root / UNITS / "getty@tty1.service").exists()
    report = run(f"@chroot{root}", [(deploys.image_boot,
                                      (BootParams(consoles=("tty1", "ttyS0")),))])
    assert report.ok, report.summary()
    unit = (root / UNITS / "mycelium-console@.service").read_text()
    assert "ExecStart=/opt/mycelium/venv/bin/mycelium tui --local /var/lib/mycelium" in unit
    assert "TTYPath=/dev/%I" in unit and "StandardInput=tty" in unit
    wants = root / UNITS / "multi-user.target.wants"
    for tty in ("tty1", "ttyS0"):
        link = wants / f"mycelium-console@{tty}.service"
        assert link.is_symlink() and os.readlink(link).endswith("mycelium-console@.service")
    assert os.readlink(root / UNITS / "getty@tty1.service") == "/dev/null"
    assert os.readlink(root / UNITS / "serial-getty@ttyS0.service") == "/dev/null"
    exe = root / "opt/mycelium/venv/bin/mycelium"  # what the agent recipe installs
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                             "mycelium-console@tty1.service"], capture_output=True, text=True)
    assert "mycelium-console" not in verify.stderr, verify.stderr
    again = run(f"@chroot{root}", [(deploys.image_boot,
                                     (BootParams(consoles=("tty1", "ttyS0")),))])
    assert again.ok and not again.changed, [op.name for op in again.changed]

