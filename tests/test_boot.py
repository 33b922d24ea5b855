"""Boot a built x86 image in QEMU (UEFI, TCG unless KVM really works) and check the node.

Marked `boot`: builds an image (the Debian bootstrap is cached; about 2 minutes cold) and
boots it (about 25 s to a login prompt under TCG, then first boot and the agent).
Run: `.venv/bin/python -m pytest -m boot tests/test_boot.py`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

from image.qemu import Guest
from rootfs_fixture import need_root

pytestmark = pytest.mark.boot
ROOT = Path(__file__).resolve().parent.parent
READY = "mycelium agent ready"


def _run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A network with one user (our SSH key), and the first node's image for it."""
    need_root()
    d = tmp_path_factory.mktemp("boot")
    _run(sys.executable, "-m", "agent.cli", "init", "--network-name", "boot", "--dir",
         str(d / "net"))
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id"), "-C", "tester")
    key = (d / "id.pub").read_text().strip()
    y = d / "net/network.yaml"
    y.write_text(y.read_text()
                 .replace("nodes: []", "nodes:\n  - {name: n1, role: sclerotium}")
                 .replace("users: []", f'users:\n  - {{name: tester, sudo: true, '
                          f'ssh_keys: ["{key}"]}}'))
    t0 = time.monotonic()
    out = _run(sys.executable, str(ROOT / "build.py"), "--board", "x86", "--network",
               str(d / "net"), "--node-name", "n1", "--first-node", "--listen",
               "10.0.2.15:7946", "--out", str(d / "dist"), "--no-xz", cwd=ROOT)
    print(out.strip().splitlines()[-1], f"({time.monotonic() - t0:.0f} s)")
    img = d / "dist/mycelium-x86-n1.img"
    size = img.stat().st_size
    with img.open("r+b") as f:  # a bigger "medium": first boot must grow the root into it
        f.truncate(size + 512 * 2**20)
    return d, img, size


def test_x86_image_boots_to_a_ready_agent_and_passes_node_checks(built):
    d, img, built_size = built
    t0 = time.monotonic()
    with Guest(img, d, name="n1", memory_mb=1024) as g:
        try:
            g.wait_for(READY, timeout=420)
        except Exception:
            print(g.console()[-4000:])
            raise
        ready_s = time.monotonic() - t0
        print(f"boot to agent ready: {ready_s:.0f} s")
        host = testinfra.get_host(
            f"paramiko://tester@127.0.0.1:{g.ssh_port}?ssh_identity_file={d / 'id'}"
            "&stricthostkeychecking=no&timeout=30", sudo=True)
        _wait_ssh(host)
        assert host.service("mycelium-agent").is_running
        assert host.service("mycelium-agent").is_enabled
        # identity from the FAT mycelium/ folder
        assert host.check_output("hostname") == "n1"
        ident = host.file("/var/lib/mycelium/identity.json")
        assert '"name": "n1"' in ident.content_string.replace('":"', '": "')
        assert host.file("/var/lib/mycelium").mode == 0o700
        assert not host.file("/boot/efi/mycelium/data").exists  # CA key moved off the FAT
        # root partition grown to the medium
        root_bytes = int(host.check_output("lsblk -bno SIZE /dev/disk/by-label/root"))
        assert root_bytes > built_size, (root_bytes, built_size)
        # host keys made at this boot, not baked in
        key = host.file("/etc/ssh/ssh_host_ed25519_key.pub")
        assert key.exists
        boot_time = float(host.check_output("date +%s")) - float(
            host.check_output("cut -d' ' -f1 /proc/uptime"))
        assert key.mtime.timestamp() >= boot_time - 5
        assert host.file("/etc/machine-id").content_string.strip()
        failed = host.check_output("systemctl --failed --no-legend --plain")
        assert failed == "", failed
        rss = int(host.check_output("ps -o rss= -C mycelium | sort -n | tail -1") or 0)
        print(f"agent RSS after boot: {rss / 1024:.0f} MB")


def _wait_ssh(host, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            host.run("true")
            return
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(2)
