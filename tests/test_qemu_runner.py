"""The QEMU runner itself, without a built image: OVMF on an empty disk is the guest.

OVMF finds nothing to boot on a blank disk and falls through to its boot manager, which
logs "BdsDxe" lines on the serial console within seconds even under TCG. That is enough to
show that the runner starts QEMU, captures the console and never leaves QEMU behind.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from agent.lab.cluster import pid_alive
from image import qemu
from image.errors import BuildError


def test_command_line_follows_platform_notes(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    g = qemu.Guest(disk, tmp_path, name="a", nets=[qemu.SocketNet("listen", 40001)],
                   accel_args=qemu.TCG, snapshot=True)
    argv = g.command()
    joined = " ".join(argv)
    assert f"file={disk},format=raw,if=virtio,snapshot=on" in joined
    assert f"hostfwd=tcp:127.0.0.1:{g.ssh_port}-:22" in joined
    assert "socket,id=n1,listen=127.0.0.1:40001" in joined
    assert f"file:{tmp_path}/a.serial.log" in joined
    assert "-accel tcg,thread=multi" in joined
    b = qemu.Guest(disk, tmp_path, name="b", accel_args=qemu.TCG)
    macs = {a.split("mac=")[1] for a in argv + b.command() if "mac=" in a}
    assert len(macs) == 3, "every NIC of every guest gets its own MAC"


def test_raspi_command_line(tmp_path: Path) -> None:
    boot = qemu.DirectBoot(tmp_path / "Image", tmp_path / "bcm2837-rpi-3-b.dtb")
    argv = qemu.Guest(tmp_path / "pi.img", tmp_path, board="raspi3b", direct=boot).command()
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-aarch64" and "-M raspi3b" in joined
    assert "if=sd" in joined and "-smp" not in argv and "-m 1G" in joined
    assert f"-serial null -serial file:{tmp_path}/pi.serial.log" in joined
    assert "console=ttyS1" in joined and "-dtb" in argv


def test_raspi_without_kernel_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="pass a DirectBoot kernel"):
        qemu.Guest(tmp_path / "pi.img", tmp_path, board="raspi3b")


def test_accel_override(monkeypatch: pytest.MonkeyPatch) -> None:
    qemu.accel.cache_clear()
    monkeypatch.setenv("MYCELIUM_QEMU_ACCEL", "tcg")
    assert qemu.accel() == qemu.TCG
    qemu.accel.cache_clear()
    monkeypatch.setenv("MYCELIUM_QEMU_ACCEL", "bogus")
    with pytest.raises(BuildError, match="use tcg or kvm"):
        qemu.accel()
    qemu.accel.cache_clear()


@pytest.mark.boot
def test_ovmf_console_and_cleanup(tmp_path: Path) -> None:
    disk = tmp_path / "empty.img"
    with disk.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    peer_port = qemu.free_port()
    with qemu.Guest(disk, tmp_path, name="ovmf", memory_mb=256,
                    nets=[qemu.SocketNet("listen", peer_port)]) as g:
        pid = g._proc.pid  # noqa: SLF001 - the test checks the process really goes away
        seen = g.wait_for(r"BdsDxe: (loading|starting|failed)", timeout=60)
        assert "BdsDxe" in seen
        with socket.create_connection(("127.0.0.1", g.ssh_port), timeout=5):
            pass  # user networking listens on the forwarded port
        with pytest.raises(BuildError, match="not seen within 1 s"):
            g.wait_for("no such text", timeout=1)
        g.stop(timeout=2)
        assert not g.running and not pid_alive(pid)
    assert g.serial_log.stat().st_size > 0


@pytest.mark.boot
def test_exit_kills_qemu_even_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with qemu.Guest(None, tmp_path, name="leak", memory_mb=128, ssh=False) as g:
            pid = g._proc.pid  # noqa: SLF001
            raise RuntimeError("test body failed")
    assert not pid_alive(pid)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_bad_arguments_fail_at_start(tmp_path: Path) -> None:
    g = qemu.Guest(None, tmp_path, name="bad", ssh=False, accel_args=qemu.TCG,
                   extra_args=["-device", "no-such-device"])
    with pytest.raises(BuildError, match="exited at start.*no-such-device"):
        g.start()
    assert not g.running
