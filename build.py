#!/usr/bin/env python3
"""Build a flashable mycelium node image, or personalise one that is already built.

    python build.py --board x86|rpi4|rpi5 [--network DIR] [--out dist/]
                    [--k3s-artifact PATH|URL [--k3s-sha256 HEX]]
    python build.py personalise IMAGE --network DIR [--node-name N]
                    [--first-node --listen HOST:PORT] [--join HOST:PORT ...]
    python build.py personalise --folder OUT --network DIR ...

A build writes dist/<name>.img, dist/<name>.img.xz and dist/<name>.manifest.json. It needs
root (mmdebstrap, chroot, file ownership in the image) and the packages `sh .ci/install
--test` installs. The Debian bootstrap is cached (~/.cache/mycelium, or $MYCELIUM_CACHE),
so a rebuild after a code change reuses it.

`personalise` writes the boot partition's mycelium/ folder (network identity, seed spore,
join token or first-node data) into the FAT partition of a built image with mtools (no
loop mount, no root), or into OUT/mycelium/ to copy onto a flashed card by hand. Do it
before the node's first boot: first boot reads the folder once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _node_args(p: argparse.ArgumentParser, required_network: bool) -> None:
    p.add_argument("--network", metavar="DIR", required=required_network,
                   help="personalise for this network (made by `mycelium init`): its "
                   "identity, seed spore and a join token go into the boot partition's "
                   "mycelium/ folder")
    p.add_argument("--node-name", default="", help="name of the node this image is for")
    p.add_argument("--first-node", action="store_true", help="make this the network's first "
                   "sclerotium (its bootstrap data dir, with the CA key, goes on the image)")
    p.add_argument("--listen", default="", help="HOST:PORT the node advertises to peers "
                   "(required with --first-node; default: its default route's address)")
    p.add_argument("--network-config", action="append", default=[], metavar="FILE",
                   help="a systemd-networkd .network file (static address, VLAN...) applied "
                   "at first boot; repeatable")
    p.add_argument("--join", action="append", default=[], metavar="HOST:PORT",
                   help="peers to contact at first boot besides the seed spore's")


def _personalisation(args: argparse.Namespace):  # -> Personalisation | None
    """The node arguments as one Personalisation; None without --network, and then none of
    them may be given (BuildError)."""
    from image.errors import BuildError
    from image.personalise import Personalisation

    if not args.network:
        if args.first_node or args.listen or args.join or args.node_name or \
                args.network_config:
            raise BuildError("--first-node, --node-name, --listen, --join and "
                             "--network-config personalise an image: add --network DIR "
                             "(made by `mycelium init`)")
        return None
    return Personalisation(Path(args.network), args.node_name, args.first_node, args.listen,
                           tuple(args.join), tuple(Path(f) for f in args.network_config))


def build_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, choices=["x86", "rpi4", "rpi5"])
    _node_args(p, required_network=False)
    p.add_argument("--out", default="dist", help="output directory (default: dist/)")
    p.add_argument("--name", help="image name (default: mycelium-BOARD[-NODE])")
    p.add_argument("--k3s-artifact", default="", metavar="PATH|URL", help="K3s binary to "
                   "bake in at /usr/local/bin/k3s (a node whose network.yaml names the same "
                   "sha256 does not download it); recorded in the manifest")
    p.add_argument("--k3s-sha256", default="", metavar="HEX", help="SHA-256 of the K3s "
                   "binary: required for a URL, checked for a path")
    p.add_argument("--no-xz", action="store_true", help="skip the .img.xz")
    p.add_argument("--no-dashboard", action="store_true", help="no console dashboard on tty1 "
                   "and the serial console (login prompts there instead)")
    p.add_argument("--preinstall", action="append", default=[], metavar="COMPONENT",
                   help="bake a component's packages into the image (podman, qemu; "
                   "repeatable), so its first apply on the node downloads nothing")
    p.add_argument("--work", help="work directory (default: a temporary one)")
    args = p.parse_args(argv)

    from image.boards import get_board
    from image.build import BuildContext, build_image, check_args
    from image.errors import BuildError

    name = args.name or "-".join(x for x in ("mycelium", args.board, args.node_name) if x)
    try:
        ctx = BuildContext(get_board(args.board), Path(args.out), Path(args.work or ""),
                           _personalisation(args), args.k3s_artifact, args.k3s_sha256,
                           not args.no_xz, name, dashboard=not args.no_dashboard,
                           preinstall=tuple(args.preinstall))
        check_args(ctx)  # every argument before any work (or the root check)
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("build.py: needs root (mmdebstrap, chroot, ownership in the image); "
              "run it with sudo", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mycelium-build-") as tmp:
        ctx.work = Path(args.work or tmp)
        try:
            build_image(ctx)
        except BuildError as e:
            print(f"build.py: {e}", file=sys.stderr)
            return 1
    return 0


def personalise_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="build.py personalise", description="Write the "
                                "mycelium/ folder into a built image's boot partition, or "
                                "into a directory with --folder.")
    p.add_argument("image", nargs="?", type=Path, help="a built (uncompressed) .img")
    p.add_argument("--folder", type=Path, metavar="OUT",
                   help="write OUT/mycelium/ instead, to copy onto a flashed card by hand")
    _node_args(p, required_network=True)
    args = p.parse_args(argv)
    if (args.image is None) == (args.folder is None):
        p.error("give an IMAGE to personalise or --folder OUT, not both")

    from image.errors import BuildError
    from image.personalise import personalise_folder, personalise_image

    try:
        spec = _personalisation(args)
        assert spec is not None  # --network is required here
        if args.folder is not None:
            out = personalise_folder(spec, args.folder)
            print(f"wrote {out}/: copy it to the root of the node's boot partition")
        else:
            offset = personalise_image(spec, args.image)
            print(f"personalised {args.image} (mycelium/ in the boot partition at byte "
                  f"{offset})")
    except BuildError as e:
        print(f"build.py personalise: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["personalise"]:
        return personalise_main(argv[1:])
    return build_main(argv)


if __name__ == "__main__":
    sys.exit(main())
