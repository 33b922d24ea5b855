"""Debian root filesystems made with mmdebstrap, cached as tarballs.

The cache key is the suite, architecture, components and package list, so a rebuild after
a code change reuses the bootstrap (the slow part: about 100 s on x86, 20 to 45 minutes for
arm64 under qemu-user) and only the recipes run again. Tests use the same cache for their
rootfs fixture, so the tree they check is the tree the image ships.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from image.errors import BuildError

# What every node needs before the recipes run: an init, a kernel-independent core, the
# agent's interpreter, SSH, time sync, and what first boot uses to grow the root partition.
CORE_PACKAGES = (
    "systemd", "systemd-sysv", "systemd-timesyncd", "systemd-resolved", "dbus",
    "udev", "kmod", "openssh-server", "sudo", "python3", "python3-venv",
    "ca-certificates", "iproute2", "iputils-ping", "e2fsprogs", "fdisk", "cloud-guest-utils",
    "procps", "less",
)


@dataclass(frozen=True)
class RootfsSpec:
    arch: str  # Debian architecture: amd64, arm64
    packages: tuple[str, ...]
    suite: str = "bookworm"
    components: tuple[str, ...] = ("main",)
    mirror: str = "http://deb.debian.org/debian"
    # Extra suites of the same mirror, e.g. bookworm-backports; a package is taken from one
    # with `name/suite` in `packages`.
    extra_suites: tuple[str, ...] = ()

    def key(self) -> str:
        d = asdict(self)
        if not self.extra_suites:
            del d["extra_suites"]  # keeps the keys (and caches) made before it existed
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def sources(self) -> list[str]:
        """mmdebstrap mirror arguments: the mirror, then one deb line per extra suite."""
        comps = " ".join(self.components)
        return [self.mirror, *(f"deb {self.mirror} {s} {comps}" for s in self.extra_suites)]


def cache_dir() -> Path:
    base = os.environ.get("MYCELIUM_CACHE") or os.path.expanduser("~/.cache/mycelium")
    return Path(base) / "rootfs"


def _binfmt_ready(arch: str) -> None:
    """arm64 packages run their maintainer scripts through qemu-user: register it."""
    import platform

    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "")
    if arch == host:
        return
    qemu = {"arm64": "aarch64", "armhf": "arm"}.get(arch)
    if qemu is None:
        raise BuildError(f"no qemu-user mapping for architecture {arch}")
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{qemu}")
    if entry.exists():
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{qemu}.conf")
    if not conf.exists():
        raise BuildError(f"{conf} missing: apt install qemu-user-static")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc",
                        "/proc/sys/fs/binfmt_misc"], check=True)
    Path("/proc/sys/fs/binfmt_misc/register").write_text(conf.read_text().strip())


def bootstrap(spec: RootfsSpec, *, hooks: tuple[str, ...] = ()) -> Path:
    """Return the cached tarball for `spec`, running mmdebstrap when it is missing."""
    out = cache_dir() / f"{spec.arch}-{spec.suite}-{spec.key()}.tar"
    if out.exists():
        return out
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap not found: apt install mmdebstrap (or run sh .ci/install)")
    _binfmt_ready(spec.arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tar")
    cmd = [
        "mmdebstrap", "--variant=minbase", f"--architectures={spec.arch}",
        f"--components={','.join(spec.components)}", f"--include={','.join(spec.packages)}",
        "--dpkgopt=force-confold", "--aptopt=APT::Install-Recommends \"false\"",
        # Docs and locales are never read on a node; dropping them saves tens of MB.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        *hooks, spec.suite, str(partial), *spec.sources(),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BuildError(f"mmdebstrap failed for {spec.arch}:\n{tail}")
    partial.rename(out)  # only a complete tarball ever carries the final name
    return out


def unpack(tarball: Path, dest: Path) -> Path:
    """Extract a cached rootfs, keeping ownership and device nodes (needs root)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["tar", "-xpf", str(tarball), "-C", str(dest), "--numeric-owner"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"cannot unpack {tarball}: {proc.stderr.strip()[-300:]}")
    return dest
