"""What an image leaves out, and why each cut is safe for a headless node.

Measured on the x86 image (MB on the root filesystem; the whole rootfs went 625 -> 446):
- usrmerge and the perl it pulls in (about 50): only the one-time /usr merge needs them,
  and the bootstrap tree is merged already; `usr-is-merged` (in the board's packages)
  keeps init-system-helpers' dependency satisfied, so dpkg and apt stay consistent.
- kernel module trees a server or VM host never loads (384 as Debian ships them, 171
  left): sound, GPUs, cameras, radios, FC and iSCSI offload HBAs, industrial I/O, flash
  chips, ISA-era NICs, exotic filesystems and protocols. Kept: virtio, NVMe, AHCI/SATA,
  SAS/RAID HBAs, USB storage and HID, common NICs, KVM, bridge/veth/vxlan/netfilter/
  overlay/wireguard (K3s, podman).
- the initramfs (35 -> 15, on the ESP where xz cannot shrink it) is rebuilt without
  network drivers, network filesystems and other root filesystems: the root is always
  the image's local ext4. A hook keeps it so when a package update rebuilds it on the
  node. Cached, like the bootstrap.
- the agent's wheelhouse (19; the venv is installed from it at build time, and
  recipes/venv.py keeps an installed venv when there are no wheels), pip and setuptools
  in the venv (24; `ensurepip` restores pip offline from python3-venv when new wheels
  arrive), test suites, C sources and debug info shipped inside wheels (venv 125 -> 79).
  Byte-code caches stay: they save seconds of every agent start under emulation.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from pathlib import Path

from image.errors import BuildError
from image.rootfs import cache_dir
from recipes.params import AgentParams

STRIP_MODULES = (
    # sound, video, radios, cameras
    "sound", "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/bluetooth",
    "net/bluetooth", "net/wireless", "net/mac80211", "drivers/input/touchscreen",
    "drivers/input/joystick", "drivers/input/tablet", "drivers/hid/intel-ish-hid",
    "drivers/nfc", "net/nfc", "drivers/net/ieee802154", "net/ieee802154", "net/mac802154",
    "net/6lowpan", "drivers/net/wwan", "drivers/net/hamradio", "drivers/net/can", "net/can",
    # old or exotic buses and links
    "drivers/infiniband", "drivers/staging", "drivers/isdn", "drivers/iio", "drivers/comedi",
    "drivers/mtd", "drivers/atm", "net/atm", "drivers/usb/atm", "drivers/net/fddi",
    "drivers/net/arcnet", "drivers/net/wan", "drivers/net/plip", "drivers/parport",
    "drivers/pcmcia", "drivers/firewire", "drivers/usb/gadget", "drivers/w1",
    "drivers/platform/surface", "drivers/platform/chrome",
    # SAN: Fibre Channel, FCoE and iSCSI offload HBAs, the LIO target (not initiators)
    "drivers/scsi/lpfc", "drivers/scsi/qla2xxx", "drivers/scsi/bfa", "drivers/scsi/qla4xxx",
    "drivers/scsi/cxgbi", "drivers/scsi/csiostor", "drivers/scsi/qedf", "drivers/scsi/qedi",
    "drivers/scsi/libfc", "drivers/scsi/fcoe", "drivers/scsi/bnx2fc", "drivers/scsi/bnx2i",
    "drivers/scsi/be2iscsi", "drivers/scsi/fnic", "drivers/scsi/scsi_debug.ko",
    "drivers/target",
    # legacy NICs (ISA/PCI era) and SmartNIC offload cards
    "drivers/net/ethernet/3com", "drivers/net/ethernet/dec", "drivers/net/ethernet/8390",
    "drivers/net/ethernet/sun", "drivers/net/ethernet/xircom", "drivers/net/ethernet/agere",
    "drivers/net/ethernet/packetengines", "drivers/net/ethernet/natsemi",
    "drivers/net/ethernet/netronome", "drivers/net/ethernet/cavium",
    # cluster, flash and legacy filesystems; protocols nobody routes on a LAN
    "fs/ocfs2", "fs/gfs2", "fs/dlm", "fs/ubifs", "fs/jffs2", "fs/nilfs2", "fs/reiserfs",
    "fs/jfs", "fs/orangefs", "fs/afs", "fs/hfs", "fs/hfsplus", "fs/ufs", "fs/omfs",
    "fs/minix", "fs/qnx4", "fs/qnx6", "fs/sysv", "fs/befs", "fs/adfs", "fs/affs", "fs/efs",
    "fs/freevxfs", "fs/hpfs", "fs/romfs", "fs/coda", "net/rxrpc", "net/tipc", "net/rds",
    "net/dccp", "net/batman-adv", "net/smc", "net/appletalk", "net/x25", "net/lapb",
    "net/phonet", "net/caif", "net/ax25", "net/netrom", "net/rose",
)
# usrmerge's dependencies are what keep perl in a minbase system.
UNNEEDED_PACKAGES = ("usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl",
                     "libtext-glob-perl", "perl", "libperl5.36", "perl-modules-5.36")
INITRAMFS_HOOK = "etc/initramfs-tools/hooks/mycelium-local-root"
_HOOK = """#!/bin/sh
# Managed by mycelium (image/slim.py). The root is always the image's ext4 on a local disk:
# drop from the initramfs what only a network root or another root filesystem needs
# (MODULES=most adds every NIC driver for NFS roots). udev loads them after switch_root.
[ "$1" = prereqs ] && exit 0
m="$DESTDIR/lib/modules/$version/kernel"
rm -rf "$m/drivers/net" "$m/net"
for d in "$m"/fs/*; do
    case "${d##*/}" in ext4|jbd2|mbcache.ko|nls|fat|vfat) ;; *) rm -rf "$d" ;; esac
done
"""
VENV_DROP = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")
SOURCE_SUFFIXES = (".c", ".h", ".pyx", ".pxd")
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "")


def slim_rootfs(root: Path, arch: str, agent: AgentParams) -> list[str]:
    """Apply every cut to the tree at `root`; returns one line per cut for the log."""
    return [purge_packages(root), strip_modules(root), rebuild_initramfs(root, arch),
            slim_venv(root, agent, arch), drop_files(root)]


def _chroot(root: Path, *cmd: str) -> str:
    r = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        raise BuildError(f"{' '.join(cmd[:2])} in the rootfs failed: "
                         f"{lines[-1] if lines else r.returncode}")
    return r.stdout


def _installed(root: Path) -> set[str]:
    out = _chroot(root, "dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n")
    return {ln.split()[0] for ln in out.splitlines() if ln.endswith(" installed")}


def purge_packages(root: Path) -> str:
    have = _installed(root)
    if "usr-is-merged" not in have:
        return "usrmerge and perl kept: add usr-is-merged to the board's packages to drop them"
    drop = [p for p in UNNEEDED_PACKAGES if p in have]
    if drop:
        # dpkg checks reverse dependencies: it refuses rather than break the package set
        _chroot(root, "dpkg", "--purge", *drop)
    return f"purged {len(drop)} packages (usrmerge, perl)"


def _kernels(root: Path) -> list[Path]:
    return sorted(p for p in (root / "usr/lib/modules").glob("*") if (p / "kernel").is_dir())


def strip_modules(root: Path) -> str:
    before = _tree_bytes(root / "usr/lib/modules")
    for mods in _kernels(root):
        for sub in STRIP_MODULES:
            target = mods / "kernel" / sub
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        _chroot(root, "depmod", "-a", mods.name)
    after = _tree_bytes(root / "usr/lib/modules")
    return f"kernel modules {before / 2**20:.0f} -> {after / 2**20:.0f} MB"


def _tree_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())


def _initramfs_key(root: Path, version: str) -> str:
    """Everything the rebuilt initramfs depends on: modules, hooks, configuration, fstab."""
    h = hashlib.sha256(version.encode())
    inputs = [root / f"usr/lib/modules/{version}/modules.dep", root / "etc/fstab",
              *sorted((root / "etc/initramfs-tools").rglob("*")),
              *sorted((root / "etc/modprobe.d").rglob("*")),
              *sorted((root / "usr/share/initramfs-tools").rglob("*"))]
    for f in inputs:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def rebuild_initramfs(root: Path, arch: str) -> str:
    if not (root / "usr/sbin/mkinitramfs").exists():
        return "initramfs: none in this rootfs"
    hook = root / INITRAMFS_HOOK
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(_HOOK)
    hook.chmod(0o755)
    if arch != HOST_ARCH:
        # mkinitramfs under qemu-user takes many minutes: the hook applies at the next
        # rebuild on the node, the image keeps the bootstrap's initramfs.
        return f"initramfs kept as bootstrapped ({arch} is emulated here)"
    lines = []
    for mods in _kernels(root):
        lines.append(_one_initramfs(root, mods.name))
    return "; ".join(lines) or "initramfs: no kernel"


def _one_initramfs(root: Path, version: str) -> str:
    initrd = root / f"boot/initrd.img-{version}"
    before = initrd.stat().st_size if initrd.exists() else 0
    cached = cache_dir().parent / "initramfs" / f"{version}-{_initramfs_key(root, version)}"
    if cached.is_file():
        shutil.copyfile(cached, initrd)
        how = "cached"
    else:
        _chroot(root, "update-initramfs", "-u", "-k", version)
        cached.parent.mkdir(parents=True, exist_ok=True)
        # beside it under its own name: with_suffix would cut at the version's dots and
        # give every 6.1 kernel the same "6.1.part"
        part = cached.with_name(cached.name + ".part")
        shutil.copyfile(initrd, part)
        part.rename(cached)
        how = "rebuilt"
    return f"initramfs {how}: {before / 2**20:.0f} -> {initrd.stat().st_size / 2**20:.0f} MB"


def slim_venv(root: Path, agent: AgentParams, arch: str) -> str:
    wheels = root / agent.wheelhouse.lstrip("/")
    venv = root / agent.venv.lstrip("/")
    before = _tree_bytes(venv) + (_tree_bytes(wheels) if wheels.is_dir() else 0)
    shutil.rmtree(wheels, ignore_errors=True)
    for site in venv.glob("lib/python3*/site-packages"):
        for name in VENV_DROP:
            for p in [site / name, *site.glob(f"{name}-*.dist-info")]:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for tests in list(site.glob("*/tests")) + list(site.glob("*/*/tests")):
            shutil.rmtree(tests)
        for f in site.rglob("*"):
            if f.suffix in SOURCE_SUFFIXES and f.is_file():
                f.unlink()
    for script in venv.glob("bin/pip*"):
        script.unlink()
    _strip_debug(venv, arch)
    after = _tree_bytes(venv)
    return f"agent venv + wheelhouse {before / 2**20:.0f} -> {after / 2**20:.0f} MB"


def _strip_debug(venv: Path, arch: str) -> None:
    """Several wheels ship their extensions with debug info (nacl's is 3.7 MB, 0.7 MB
    stripped). Only the host's own architecture: its binutils read no other."""
    if arch != HOST_ARCH or shutil.which("strip") is None:
        return
    libs = [str(f) for f in venv.rglob("*.so") if f.is_file() and not f.is_symlink()]
    if libs:
        subprocess.run(["strip", "--strip-unneeded", *libs], capture_output=True, check=False)


def drop_files(root: Path) -> str:
    for pattern in ("etc/ssh/ssh_host_*", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "var/log/*.log", "tmp/*", "root/.cache"):
        for p in root.glob(pattern):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    # Empty (not absent) machine-id: systemd makes a new one at first boot.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    return "caches, logs, host keys and machine-id dropped"
