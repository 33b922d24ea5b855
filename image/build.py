"""The image build as a list of steps (mkosi's shape): each takes the context, is timed and
announced, and returns early when it does not apply.

bootstrap_rootfs -> build_wheels -> install_core (recipes base + agent + image boot, and
the K3s binary when given: the same code the agent runs on a node) -> strip -> personalise
(the FAT mycelium/ folder, image/personalise.py) -> make_filesystems -> assemble_disk ->
compress -> write_manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.authoring.netdir import NetworkDir
from image.artifacts import Artifact, resolve
from image.artifacts import check as check_artifact
from image.boards import Board
from image.disk import du_kib, ext4_size_mb, make_ext4, make_vfat
from image.errors import BuildError
from image.personalise import Personalisation, write_folder
from image.personalise import check as check_personalisation
from image.progress import TIMINGS, step
from image.rootfs import bootstrap, unpack
from image.slim import slim_rootfs
from image.wheels import build_wheelhouse
from recipes.artifact import file_sha256
from recipes.deploys import K3S_BINARY
from recipes.params import AgentParams, BaseParams, BootParams, User


@dataclass
class BuildContext:
    board: Board
    out: Path
    work: Path
    personalise: Personalisation | None = None  # which network the image joins, as what
    k3s_artifact: str = ""  # path or URL of the K3s binary to bake in
    k3s_sha256: str = ""  # required for a URL; checked for a path when given
    compress: bool = True
    name: str = ""
    users: tuple[User, ...] = ()
    dashboard: bool = True  # the console dashboard on tty1 and the serial console
    preinstall: tuple[str, ...] = ()  # components baked in (recipes.params.PREINSTALL)
    manifest: dict = field(default_factory=dict)
    k3s: Artifact | None = None  # the checked K3s binary, once resolved

    @property
    def rootfs(self) -> Path:
        return self.work / "rootfs"

    @property
    def image(self) -> Path:
        return self.out / f"{self.name}.img"

    @property
    def boot_dir(self) -> Path:
        return self.work / "mycelium"

    @property
    def network(self) -> Path | None:
        return self.personalise.network if self.personalise else None


def check_args(ctx: BuildContext) -> None:
    """Every argument, before any work: a mistake costs a second, not a Debian bootstrap."""
    if ctx.personalise is not None:
        check_personalisation(ctx.personalise)
    preinstall_packages(ctx.preinstall)
    if ctx.k3s_artifact:
        check_artifact(ctx.k3s_artifact, ctx.k3s_sha256)
    elif ctx.k3s_sha256:
        raise BuildError("--k3s-sha256 checks a K3s binary: add --k3s-artifact PATH|URL")


def preinstall_packages(components: tuple[str, ...]) -> tuple[str, ...]:
    from recipes.params import PREINSTALL

    unknown = sorted(set(components) - set(PREINSTALL))
    if unknown:
        raise BuildError(f"--preinstall {unknown[0]}: not a component; choose from "
                         f"{', '.join(sorted(PREINSTALL))}")
    return tuple(p for c in sorted(set(components)) for p in PREINSTALL[c])


def bootstrap_rootfs(ctx: BuildContext) -> None:
    spec = ctx.board.rootfs_spec(preinstall_packages(ctx.preinstall))
    with step(f"Bootstrapping {spec.arch} rootfs (cached: {spec.key()})"):
        tarball = bootstrap(spec)
        if ctx.rootfs.exists():
            shutil.rmtree(ctx.rootfs)
        unpack(tarball, ctx.rootfs)


def build_wheels(ctx: BuildContext) -> None:
    with step("Building the agent's wheelhouse"):
        build_wheelhouse(ctx.work / "wheels", ctx.board.arch)


def install_core(ctx: BuildContext) -> None:
    from recipes import deploys
    from recipes.run import run

    if ctx.network:
        ctx.users = _network_users(ctx.network)
    steps = [(deploys.base, (BaseParams("mycelium", ctx.users),)),
             (deploys.agent, (AgentParams(running=False), str(ctx.work / "wheels"))),
             (deploys.image_boot, (BootParams(ctx.board.boot_label, ctx.board.boot_mount,
                                              consoles=("tty1", ctx.board.serial)
                                              if ctx.dashboard else ()),))]
    if ctx.k3s is not None:
        steps.append((deploys.k3s_binary, (str(ctx.k3s.local), ctx.k3s.sha256)))
    names = "base + agent + image boot" + (" + K3s binary" if ctx.k3s else "")
    with step(f"Applying recipes {names} to the rootfs"):
        report = run(f"@chroot{ctx.rootfs}", steps)
        if not report.ok:
            failed = report.failed[0] if report.failed else None
            detail = f"{failed.name}: {failed.output.strip()[-400:]}" if failed else report.error
            raise BuildError(f"recipes failed in the rootfs: {detail}")
        print(f"    {report.summary()}", flush=True)


def fetch_artifacts(ctx: BuildContext) -> None:
    """Check (and for a URL, download) the K3s binary before anything slow runs."""
    if not ctx.k3s_artifact:
        return
    with step(f"Checking the K3s artifact {ctx.k3s_artifact}"):
        ctx.k3s = resolve(ctx.k3s_artifact, ctx.k3s_sha256)
        print(f"    sha256 {ctx.k3s.sha256}", flush=True)


def strip(ctx: BuildContext) -> None:
    with step("Slimming: packages, kernel modules, initramfs, venv, caches, host keys"):
        for line in slim_rootfs(ctx.rootfs, ctx.board.arch, AgentParams()):
            print(f"    {line}", flush=True)


def personalise(ctx: BuildContext) -> None:
    """The FAT mycelium/ folder: what first boot reads (image/personalise.py)."""
    p = ctx.personalise
    if p is None:
        return
    with step(f"Personalising for network {ctx.network}"):
        write_folder(p, ctx.boot_dir)


def _network_users(network: Path) -> tuple[User, ...]:
    from agent.desired.schema import parse_state

    return parse_state(NetworkDir(network).network_yaml.read_bytes()).users


def make_filesystems(ctx: BuildContext) -> tuple[Path, Path]:
    with step("Writing the boot (FAT) and root (ext4) filesystems"):
        # boot files first: a board may move them out of the rootfs (x86: kernel, initrd)
        files = ctx.board.boot_files(ctx.rootfs, ctx.work)
        if ctx.boot_dir.exists():
            files["mycelium"] = ctx.boot_dir
        need = sum(_size(p) for p in files.values()) / 2**20
        size = max(int(need * 1.2) + 32, ctx.board.boot_min_mb)
        boot = make_vfat(files, ctx.work / "boot.vfat", size, ctx.board.boot_label)
        root = make_ext4(ctx.rootfs, ctx.work / "root.ext4", ext4_size_mb(ctx.rootfs, 0.15))
    return boot, root


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def assemble_disk(ctx: BuildContext, boot: Path, root: Path) -> None:
    with step(f"Assembling {ctx.image}"):
        ctx.out.mkdir(parents=True, exist_ok=True)
        ctx.board.assemble(ctx.image, boot, root)


def compress(ctx: BuildContext) -> None:
    if not ctx.compress:
        return
    with step("Compressing (xz)"):
        xz = ctx.image.with_suffix(".img.xz")
        with xz.open("wb") as f:
            subprocess.run(["xz", "-T0", "-6", "-c", str(ctx.image)], stdout=f, check=True)


def write_manifest(ctx: BuildContext) -> Path:
    with step("Writing the manifest"):
        pkgs = subprocess.run(["chroot", str(ctx.rootfs), "dpkg-query", "-W",
                               "-f", "${Package} ${Version}\\n"], capture_output=True,
                              text=True, check=True).stdout.split("\n")
        xz = ctx.image.with_suffix(".img.xz")
        ctx.manifest = {
            "board": ctx.board.name, "arch": ctx.board.arch, "built": time.time(),
            "image": ctx.image.name, "size_bytes": ctx.image.stat().st_size,
            "sha256": file_sha256(ctx.image),
            "xz": xz.name if xz.exists() else None,
            "xz_size_bytes": xz.stat().st_size if xz.exists() else None,
            "xz_sha256": file_sha256(xz) if xz.exists() else None,
            "rootfs_mb": round(du_kib(ctx.rootfs) / 1024), "space": _space(ctx.rootfs),
            "partitions_mb": {n: round((ctx.work / f).stat().st_size / 2**20)
                              for n, f in (("boot", "boot.vfat"), ("root", "root.ext4"))
                              if (ctx.work / f).exists()},
            "packages": dict(p.split(" ", 1) for p in pkgs if " " in p),
            "preinstalled": sorted(set(ctx.preinstall)),
            "personalised": ctx.personalise is not None,
            "node_name": ctx.personalise.node_name if ctx.personalise else "",
            "k3s": ({"source": ctx.k3s.source, "path": K3S_BINARY, "sha256": ctx.k3s.sha256}
                    if ctx.k3s else None),
            "steps": {t: round(s, 1) for t, s in TIMINGS},
        }
        path = ctx.out / f"{ctx.name}.manifest.json"
        path.write_text(json.dumps(ctx.manifest, indent=2) + "\n")
    return path


def _space(root: Path) -> dict[str, int]:
    """Where the space goes (MB), for the size figures in the README."""
    parts = ["usr/lib/modules", "opt/mycelium/venv", "opt/mycelium/wheels", "usr/local/bin",
             "usr/lib/python3.11", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
             "usr/share", "boot", "usr/lib/firmware", "var"]
    return {p: round(du_kib(root / p) / 1024) for p in parts if (root / p).exists()}


def build_image(ctx: BuildContext) -> Path:
    check_args(ctx)
    TIMINGS.clear()
    start = time.monotonic()
    ctx.work.mkdir(parents=True, exist_ok=True)
    fetch_artifacts(ctx)
    bootstrap_rootfs(ctx)
    build_wheels(ctx)
    install_core(ctx)
    strip(ctx)
    personalise(ctx)
    boot, root = make_filesystems(ctx)
    assemble_disk(ctx, boot, root)
    compress(ctx)
    manifest = write_manifest(ctx)
    print(f"built {ctx.image} in {time.monotonic() - start:.0f} s "
          f"({ctx.manifest['size_bytes'] / 2**20:.0f} MiB"
          + (f", {ctx.manifest['xz_size_bytes'] / 2**20:.0f} MiB xz" if ctx.compress else "")
          + f"); manifest {manifest}", flush=True)
    return ctx.image
