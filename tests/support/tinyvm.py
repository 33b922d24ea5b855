"""A tiny VM for endophyte tests: the host's Debian kernel and a busybox initramfs.

Boots under TCG in a few seconds. Its /init loads the e1000 NIC and ACPI power-button
drivers from the host's modules, configures QEMU's user network (10.0.2.15), serves
HTTP on port 80 (the page says `tiny-vm`), powers off on ACPI powerdown (busybox acpid),
and prints `tiny-counter N` once a second on the serial port (ttyS0), N increasing.

With `tiny.fs=1` (and `tiny_vm(fs=True)`) /dev/vda is an ext2 file system (`fs_image`)
mounted on /mnt instead: each tick appends N to /mnt/log, rewrites one of 20 small files,
`sync`s and prints `tiny-fs N`; a powerdown unmounts it at the next tick.

With a raw disk (virtio, /dev/vda: `disk_image` makes one), each tick first reads block 0
with O_DIRECT (what the virtual disk holds, not the guest's page cache), writes N there
(O_DIRECT), and prints `tiny-disk N D`, D the number it read: D = N - 1 while the disk
and the guest's memory belong to the same instant, so a VM resumed over a disk of another
instant shows it at its next tick. `tiny.rate=KIB` on the kernel command line also writes
KIB KiB of random data per tick to fresh 64 KiB blocks (a known disk write rate).

The initramfs is a newc cpio (agent/node/vm/initramfs.py: no cpio or root needed),
gzip-compressed, and built once into the cache ($MYCELIUM_CACHE/tinyvm, named by its inputs' hash).
Needs `busybox-static` and `linux-image-amd64` (both in .ci/install --test).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.node.vm.initramfs import newc

BUSYBOX = Path("/bin/busybox")
MODULES = ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
           "kernel/drivers/acpi/button.ko", "kernel/drivers/input/evdev.ko")
DISK_MODULES = ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko")
COUNTER = "tiny-counter"
DISK = "tiny-disk"
FS = "tiny-fs"
FS_MODULES = ("kernel/crypto/crc32c_generic.ko", "kernel/lib/crc16.ko", "kernel/fs/mbcache.ko",
              "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko")
PAGE = "tiny-vm\n"
GUEST_PORT = 80
CMDLINE = "console=ttyS0 quiet panic=-1"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /www /etc/acpi/PWRF
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko /lib/modules/disk/*.ko; do insmod "$m"; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "{PAGE.strip()}" > /www/index.html
httpd -p {GUEST_PORT} -h /www
rate=0
fs=0
for a in $(cat /proc/cmdline); do
  case "$a" in tiny.rate=*) rate=${{a#tiny.rate=}};; tiny.fs=1) fs=1;; esac
done
if [ "$fs" = 1 ]; then
  mkdir -p /mnt
  mount -t ext2 /dev/vda /mnt || fs=2  # 2: no file system, and the disk is left alone
  # powerdown: the loop unmounts at its next tick, so the file system is left clean
  printf '#!/bin/sh\\ntouch /tmp/stop\\nsleep 5\\npoweroff -f\\n' > /etc/acpi/PWRF/00000080
else
  printf '#!/bin/sh\\npoweroff -f\\n' > /etc/acpi/PWRF/00000080
fi
chmod +x /etc/acpi/PWRF/00000080
sleep 1  # evdev creates /dev/input/event* for the power button
acpid -c /etc/acpi -l /tmp/acpid.log
n=0
while true; do
  n=$((n+1))
  if [ "$fs" = 1 ]; then
    [ -e /tmp/stop ] && umount /mnt && poweroff -f
    echo $n >> /mnt/log
    dd if=/dev/urandom of=/mnt/f$((n % 20)) bs=4k count=$((1 + n % 8)) 2>/dev/null
    sync
    echo "{FS} $n"
  elif [ "$fs" = 0 ] && [ -b /dev/vda ]; then
    d=$(dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | tr -dc 0-9)
    echo $n | dd of=/dev/vda bs=4096 conv=sync,notrunc oflag=direct 2>/dev/null
    echo "{DISK} $n ${{d:-0}}"
    if [ "$rate" -gt 0 ]; then
      w=$((rate / 64)); at=$((16 + n * w % 512))
      dd if=/dev/urandom of=/dev/vda bs=64k count=$w seek=$at oflag=direct 2>/dev/null
    fi
  fi
  echo "{COUNTER} $n"
  sleep 1
done
"""


@dataclass(frozen=True)
class TinyVM:
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE


def host_kernel() -> tuple[Path, Path] | None:
    """The newest /boot/vmlinuz-* readable here and its modules dir, or None."""
    for k in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        mods = Path("/lib/modules") / k.name.removeprefix("vmlinuz-")
        if os.access(k, os.R_OK) and all((mods / m).is_file() for m in MODULES):
            return k, mods
    return None


def cache_root() -> Path:
    base = os.environ.get("MYCELIUM_CACHE") or os.path.expanduser("~/.cache/mycelium")
    return Path(base) / "tinyvm"


def tiny_vm(cache: Path | None = None, fs: bool = False) -> TinyVM:
    """The tiny VM's kernel and initramfs (built on first use); skips the test when the
    host lacks the kernel, busybox-static or QEMU. `fs`: with the ext2 driver (ext4.ko
    and what it needs, 2.5 MB), for `tiny.fs=1`."""
    found = host_kernel()
    if found is None or not BUSYBOX.is_file() or not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs linux-image-amd64, busybox-static, qemu-system-x86: "
                    "sh .ci/install --test")
    kernel, mods = found
    files = {"init": (INIT.encode(), 0o755), "bin/busybox": (BUSYBOX.read_bytes(), 0o755)}
    for m in MODULES:
        files[f"lib/modules/{Path(m).name}"] = ((mods / m).read_bytes(), 0o644)
    for i, m in enumerate(DISK_MODULES + (FS_MODULES if fs else ())):  # numbered: in
        if (mods / m).is_file():
            files[f"lib/modules/disk/{i:02}-{Path(m).name}"] = (  # dependency order
                (mods / m).read_bytes(), 0o644)
    key = hashlib.sha256(b"".join(n.encode() + hashlib.sha256(d).digest()
                                  for n, (d, _) in sorted(files.items()))).hexdigest()[:16]
    out = (cache or cache_root()) / key
    initrd = out / "initrd.gz"
    if not initrd.is_file():
        out.mkdir(parents=True, exist_ok=True)
        part = initrd.with_suffix(".part")
        part.write_bytes(gzip.compress(newc(files), 6, mtime=0))
        part.rename(initrd)
    return TinyVM(kernel, initrd)


def page(port: int) -> str | None:
    """The guest's page through the node's forward, or None while it is not served yet
    (the guest's NIC comes up a few seconds after its counter starts)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError):
        return None


# A state with the tiny VM replicated to one backup. n1 (the sclerotium) takes the
# endomycete, so the VM's primary and backup are the other nodes.
REPLICATED_YAML = """\
schema: 1
network: {{name: local}}
spores: {{primary: {{target_sclerotia: 1}}}}
services:
  endomycetes:
    web: {{image: localhost/web:1, replicas: 1}}
  endophytes:
    tiny:
      kernel: {kernel}
      initrd: {initrd}
      cmdline: {cmdline}
      cpus: 1
      memory_mb: {memory}
      backups: 1
      replication_interval_ms: {interval}
"""


def replicated_state(port: int | None, memory_mb: int = 128, interval_ms: int = 1000,
                     image: Path | None = None) -> bytes:
    """REPLICATED_YAML for the tiny VM (built on first use; skips as tiny_vm does), with
    host `port` forwarded to its web server and `image` as its disk. Agents on one host
    that run two copies at once (a planned move keeps the old one until the new one runs)
    need None: two QEMUs cannot forward one host port."""
    vm = tiny_vm()
    text = REPLICATED_YAML.format(kernel=vm.kernel, initrd=vm.initrd, cmdline=vm.cmdline,
                                  memory=memory_mb, interval=interval_ms)
    if image is not None:
        text += f"      image: {image}\n"
    if port is not None:
        text += f"      ports: [{{port: {port}, target: 80}}]\n"
    return text.encode()


def fs_image(path: Path, size_mb: int = 32) -> Path:
    """A raw base image holding an empty ext2 file system, for `tiny.fs=1`."""
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-F", str(path), f"{size_mb}M"],
                   check=True, capture_output=True)
    return path


def disk_image(path: Path, size_mb: int = 64) -> Path:
    """An empty qcow2 base image for the tiny VM's disk."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mb}M"],
                   check=True)
    return path
