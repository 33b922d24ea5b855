"""The image build as a list of steps (mkosi's shape): each takes the context, is timed and
announced, and returns early when it does not apply.

bootstrap_rootfs -> build_wheels -> install_core (recipes base + agent + image boot, the
same code the agent runs on a node) -> strip -> personalise (the FAT mycelium/ folder) ->
make_filesystems -> assemble_disk -> compress -> write_manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from agent.desired import User
from agent.netdir import NetworkDir
from image.boards import Board
from image.disk import du_kib, ext4_size_mb, make_ext4, make_vfat
from image.errors import BuildError
from image.progress import TIMINGS, step
from image.rootfs import bootstrap, unpack
from image.wheels import build_wheelhouse
from recipes.artifact import file_sha256
from recipes.params import AgentParams, BaseParams, BootParams

# Kernel module trees a headless node never loads (sound, GPUs, cameras, radios):
# about 150 MB of the 380 MB the Debian kernel ships.
STRIP_MODULES = ("sound", "drivers/gpu", "drivers/media", "drivers/infiniband",
                 "drivers/net/wireless", "drivers/staging", "drivers/isdn", "drivers/iio",
                 "drivers/bluetooth", "net/bluetooth", "net/wireless", "net/mac80211",
                 "drivers/input/touchscreen", "drivers/hid/intel-ish-hid")


@dataclass
class BuildContext:
    board: Board
    out: Path
    work: Path
    network: Path | None = None  # operator's network dir, to personalise the image
    node_name: str = ""
    first_node: bool = False  # bake the network's bootstrap data dir (CA key) in
    listen: str = ""  # HOST:PORT the node advertises (the first node: also the bootstrap one)
    join: tuple[str, ...] = ()
    k3s_artifact: str = ""
    compress: bool = True
    name: str = ""
    users: tuple[User, ...] = ()
    network_files: tuple[Path, ...] = ()  # systemd-networkd files applied at first boot
    manifest: dict = field(default_factory=dict)

    @property
    def rootfs(self) -> Path:
        return self.work / "rootfs"

    @property
    def image(self) -> Path:
        return self.out / f"{self.name}.img"

    @property
    def boot_dir(self) -> Path:
        return self.work / "mycelium"


def bootstrap_rootfs(ctx: BuildContext) -> None:
    spec = ctx.board.rootfs_spec()
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
             (deploys.image_boot, (BootParams(ctx.board.boot_label, ctx.board.boot_mount),))]
    with step("Applying recipes base + agent + image boot to the rootfs"):
        report = run(f"@chroot{ctx.rootfs}", steps)
        if not report.ok:
            failed = report.failed[0] if report.failed else None
            detail = f"{failed.name}: {failed.output.strip()[-400:]}" if failed else report.error
            raise BuildError(f"recipes failed in the rootfs: {detail}")
        print(f"    {report.summary()}", flush=True)


def strip(ctx: BuildContext) -> None:
    with step("Stripping unneeded kernel modules, caches, host keys and machine-id"):
        for mods in (ctx.rootfs / "usr/lib/modules").glob("*"):
            for sub in STRIP_MODULES:
                shutil.rmtree(mods / "kernel" / sub, ignore_errors=True)
            subprocess.run(["chroot", str(ctx.rootfs), "depmod", "-a", mods.name], check=True)
        for pattern in ("etc/ssh/ssh_host_*", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                        "var/log/*.log", "tmp/*", "root/.cache"):
            for p in ctx.rootfs.glob(pattern):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        # Empty (not absent) machine-id: systemd makes a new one at first boot.
        (ctx.rootfs / "etc/machine-id").write_text("")
        (ctx.rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def personalise(ctx: BuildContext) -> None:
    """The FAT mycelium/ folder: what first boot reads (image/firstboot docs in README)."""
    if ctx.network is None:
        return
    net = NetworkDir(ctx.network)
    with step(f"Personalising for network {ctx.network}"):
        d = ctx.boot_dir
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        shutil.copy(net.root_json, d / "root.json")
        if ctx.node_name:
            (d / "node-name").write_text(ctx.node_name + "\n")
        if ctx.join:
            (d / "join").write_text(" ".join(ctx.join) + "\n")
        if ctx.listen:
            (d / "advertise").write_text(ctx.listen + "\n")
        if ctx.network_files:
            (d / "network").mkdir()
            for f in ctx.network_files:
                if f.suffix not in (".network", ".netdev", ".link"):
                    raise BuildError(f"{f}: a networkd file must end in .network, .netdev "
                                     "or .link")
                shutil.copy(f, d / "network" / f.name)
        if ctx.first_node:
            _bootstrap_first(ctx, net)
        else:
            from agent.identity import make_token

            token = make_token(net, "rhizomorph", timedelta(days=30), ctx.node_name or None)
            (d / "token").write_text(token + "\n")
        shutil.copy(net.spore_json, d / "spore.json")  # after bootstrap: it lists us


def _bootstrap_first(ctx: BuildContext, net: NetworkDir) -> None:
    from agent.bootstrap import bootstrap_first_node

    if not (ctx.node_name and ctx.listen):
        raise BuildError("--first-node needs --node-name and --listen HOST:PORT")
    bootstrap_first_node(net, ctx.boot_dir / "data", ctx.node_name, ctx.listen)


def _network_users(network: Path) -> tuple[User, ...]:
    from agent.schema import parse_state

    return parse_state(NetworkDir(network).network_yaml.read_bytes()).users


def make_filesystems(ctx: BuildContext) -> tuple[Path, Path]:
    with step("Writing the root (ext4) and boot (FAT) filesystems"):
        root = make_ext4(ctx.rootfs, ctx.work / "root.ext4", ext4_size_mb(ctx.rootfs, 0.15))
        files = ctx.board.boot_files(ctx)
        if ctx.boot_dir.exists():
            files["mycelium"] = ctx.boot_dir
        need = sum(_size(p) for p in files.values()) / 2**20
        boot = make_vfat(files, ctx.work / "boot.vfat", int(need * 1.2) + 32,
                         ctx.board.boot_label)
    return boot, root


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def assemble_disk(ctx: BuildContext, boot: Path, root: Path) -> None:
    with step(f"Assembling {ctx.image}"):
        ctx.out.mkdir(parents=True, exist_ok=True)
        ctx.board.assemble(ctx, boot, root)


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
            "packages": dict(p.split(" ", 1) for p in pkgs if " " in p),
            "personalised": ctx.network is not None, "node_name": ctx.node_name,
            "steps": {t: round(s, 1) for t, s in TIMINGS},
        }
        path = ctx.out / f"{ctx.name}.manifest.json"
        path.write_text(json.dumps(ctx.manifest, indent=2) + "\n")
    return path


def _space(root: Path) -> dict[str, int]:
    """Where the space goes (MB), for the size figures in the README."""
    parts = ["usr/lib/modules", "opt/mycelium/venv", "opt/mycelium/wheels",
             "usr/lib/python3.11", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
             "usr/share", "boot", "usr/lib/firmware", "var"]
    return {p: round(du_kib(root / p) / 1024) for p in parts if (root / p).exists()}


def build_image(ctx: BuildContext) -> Path:
    TIMINGS.clear()
    start = time.monotonic()
    ctx.work.mkdir(parents=True, exist_ok=True)
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
