"""The boot partition's mycelium/ folder: what a node's first boot reads to take its identity.

One function writes the folder; three callers put it somewhere: the image build (into the
FAT image it is making), `build.py personalise IMAGE` (into the FAT partition of an image
that is already built, generic or not, with mtools at the partition's offset: no loop
mount, no root), and `build.py personalise --folder DIR` (a plain directory, to copy onto
a flashed card by hand). Folder layout (read by configs/templates/mycelium-firstboot.sh.j2):
root.json, spore.json, token or data/ (first node), node-name, join, advertise, network/.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from image.disk import fat_partition_offset, replace_fat_dir
from image.errors import BuildError

FOLDER = "mycelium"
NETWORKD_SUFFIXES = (".network", ".netdev", ".link")


@dataclass(frozen=True)
class Personalisation:
    """Which network a node joins and as what; the image build and the CLI fill it."""

    network: Path  # operator's network dir, made by `mycelium init`
    node_name: str = ""
    first_node: bool = False  # the network's first sclerotium: carries the CA key
    listen: str = ""  # HOST:PORT the node advertises (the first node: its bootstrap one)
    join: tuple[str, ...] = ()
    network_files: tuple[Path, ...] = ()  # systemd-networkd files applied at first boot
    token_days: int = 30


def write_folder(p: Personalisation, dest: Path) -> Path:
    """Write the mycelium/ folder as `dest` (replaced if it exists); returns `dest`."""
    from agent.authoring.netdir import NetworkDir
    from agent.errors import MyceliumError

    check(p)
    net = NetworkDir(p.network)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        _fill(p, net, dest)
    except MyceliumError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise BuildError(f"personalising for {p.network}: {e}") from e
    return dest


def check(p: Personalisation) -> None:
    """Refuse bad arguments in one line with the fix, before any work (the image build
    calls this first, so a missing --listen does not wait for the Debian bootstrap)."""
    from agent.authoring.netdir import NetworkDir

    if not NetworkDir(p.network).root_json.is_file():
        raise BuildError(f"{p.network} is not a network directory (no root.json); make one "
                         "with `mycelium init --network-name NAME --dir DIR`")
    missing = " and ".join(m for m, ok in (("--node-name", p.node_name),
                                           ("--listen HOST:PORT", p.listen)) if not ok)
    if p.first_node and missing:
        raise BuildError(f"--first-node needs {missing}: e.g. --node-name n1 --listen "
                         "192.168.1.10:7946, the address its peers reach it at (under QEMU "
                         "user networking: --listen 10.0.2.15:7946)")
    if p.listen and not _host_port(p.listen):
        raise BuildError(f"--listen {p.listen!r}: give HOST:PORT, e.g. 192.168.1.10:7946")
    for peer in p.join:
        if not _host_port(peer):
            raise BuildError(f"--join {peer!r}: give HOST:PORT, e.g. 192.168.1.10:7946")
    for f in p.network_files:
        if f.suffix not in NETWORKD_SUFFIXES:
            raise BuildError(f"{f}: a networkd file must end in .network, .netdev or .link")
        if not f.is_file():
            raise BuildError(f"{f}: no such networkd file")


def _host_port(addr: str) -> bool:
    from agent.errors import DataError
    from agent.node.enrol import split_addr

    try:
        host, port = split_addr(addr)
    except DataError:
        return False
    return bool(host) and 0 < port < 65536


def _fill(p: Personalisation, net, d: Path) -> None:
    shutil.copy(net.root_json, d / "root.json")
    for name, value in (("node-name", p.node_name), ("join", " ".join(p.join)),
                        ("advertise", p.listen)):
        if value:
            (d / name).write_text(value + "\n")
    if p.network_files:
        (d / "network").mkdir()
        for f in p.network_files:
            shutil.copy(f, d / "network" / f.name)
    if p.first_node:
        from agent.authoring.bootstrap import bootstrap_first_node

        bootstrap_first_node(net, d / "data", p.node_name, p.listen)
    else:
        from agent.authoring.identity import make_token

        token = make_token(net, "rhizomorph", timedelta(days=p.token_days),
                           p.node_name or None)
        (d / "token").write_text(token + "\n")
    shutil.copy(net.spore_json, d / "spore.json")  # after bootstrap: it lists the first node


def personalise_image(p: Personalisation, image: Path) -> int:
    """Write the folder into the FAT partition of a built image; returns the byte offset."""
    if image.suffix in (".xz", ".gz", ".zst"):
        raise BuildError(f"{image} is compressed: decompress it first (unxz -k {image}) and "
                         "personalise the .img")
    if not image.is_file():
        raise BuildError(f"{image}: no such image; build one with `python build.py --board ...`")
    offset = fat_partition_offset(image)
    with tempfile.TemporaryDirectory(prefix="mycelium-personalise-") as tmp:
        folder = write_folder(p, Path(tmp) / FOLDER)
        replace_fat_dir(image, offset, folder, FOLDER)
    return offset


def personalise_folder(p: Personalisation, out: Path) -> Path:
    """Write OUT/mycelium/: copy it onto the boot partition of a flashed card by hand."""
    out.mkdir(parents=True, exist_ok=True)
    return write_folder(p, out / FOLDER)

