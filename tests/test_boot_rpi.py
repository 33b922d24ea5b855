"""Boot a built rpi4 image on QEMU's raspi3b (TCG) and check the node, as the x86 test does.

QEMU 7.2 has no Pi 4 or 5 model, so the Pi 4 image's SD card boots on the Pi 3 model: the
same arm64 kernel, initrd and root, with the kernel, initrd, Pi 3 device tree and
cmdline.txt taken from the image's own FAT partition (QEMU plays the firmware's part).
The NIC is QEMU's usb-net (RNDIS/CDC over the emulated dwc2 USB host), which the kernel
names usb0: a networkd file for it goes through the FAT mycelium/network/ folder.

Marked `boot` and `slow`: needs the arm64 bootstrap (20 to 45 minutes once, then cached),
builds the image (about 3 minutes: recipes run under qemu-user) and boots it (about 2
minutes to a ready agent under TCG). Run: `.venv/bin/python -m pytest -m "boot and slow"
tests/test_boot_rpi.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from image.boards.rpi import config_entries
from image.qemu import DirectBoot, Guest
from support.boot import READY, make_network, ssh_host
from support.pi_image import build_pi, fat_names, fat_text, mtools, need_arm64_cache

pytestmark = [pytest.mark.boot, pytest.mark.slow]
USB_NET = "[Match]\nName=usb*\n\n[Network]\nDHCP=ipv4\n"


def _direct_boot(img: Path, d: Path) -> DirectBoot:
    """What the Pi firmware would load, read from the image's FAT partition."""
    cfg = config_entries(fat_text(img, "config.txt"))
    files = {"kernel": cfg["kernel"], "initrd": cfg["initramfs"], "dtb": "bcm2837-rpi-3-b.dtb"}
    for name in files.values():
        mtools(img, "mcopy", "-o", f"::/{name}", str(d / name))
    return DirectBoot(d / files["kernel"], d / files["dtb"], d / files["initrd"],
                      fat_text(img, "cmdline.txt").strip())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    need_arm64_cache()
    d = tmp_path_factory.mktemp("rpi")
    net, _ = make_network(d, "  - {name: p1, role: sclerotium}", name="pi")
    (d / "20-usb.network").write_text(USB_NET)
    t0 = time.monotonic()
    img = build_pi("rpi4", d / "dist", "--network", str(net), "--node-name", "p1",
                   "--first-node", "--listen", "10.0.2.15:7946",
                   "--network-config", str(d / "20-usb.network"))
    print(f"rpi4 image built in {time.monotonic() - t0:.0f} s")
    assert "mycelium" in fat_names(img)
    size = img.stat().st_size
    with img.open("r+b") as f:  # a bigger SD card, still a power of two, for growpart
        f.truncate(2 * size)
    return d, img, size


def test_rpi4_image_boots_on_raspi3b_to_a_ready_agent(built: tuple[Path, Path, int]) -> None:
    d, img, built_size = built
    direct = _direct_boot(img, d)
    t0 = time.monotonic()
    with Guest(img, d, board="raspi3b", name="p1", direct=direct) as g:
        try:
            g.wait_for(READY, timeout=1500)
        except Exception:
            print(g.console()[-4000:])
            raise
        print(f"raspi3b boot to agent ready: {time.monotonic() - t0:.0f} s")
        host = ssh_host(g, d / "id", timeout=120, connect_timeout=60)
        assert host.service("mycelium-agent").is_running
        assert host.service("mycelium-agent").is_enabled
        assert host.check_output("hostname") == "p1"  # from the FAT mycelium/ folder
        assert host.file("/var/lib/mycelium").mode == 0o700
        assert host.file("/boot/firmware/config.txt").exists  # the FAT is mounted
        assert not host.file("/boot/firmware/mycelium/data").exists  # CA key moved off it
        root_bytes = int(host.check_output("lsblk -bno SIZE /dev/disk/by-label/root"))
        assert root_bytes > built_size, (root_bytes, built_size)
        key = host.file("/etc/ssh/ssh_host_ed25519_key.pub")
        boot_time = float(host.check_output("date +%s")) - float(
            host.check_output("cut -d' ' -f1 /proc/uptime"))
        assert key.exists and key.mtime.timestamp() >= boot_time - 5
        failed = host.check_output("systemctl --failed --no-legend --plain")
        assert failed == "", failed
        print(host.check_output("uname -r; ip -br -4 addr; df -h /"))
