#!/usr/bin/env python3
"""Build a flashable mycelium node image.

    python build.py --board x86|rpi4|rpi5 [--network DIR] [--out dist/] [--k3s-artifact PATH]

Writes dist/<name>.img, dist/<name>.img.xz and dist/<name>.manifest.json. Needs root
(mmdebstrap, chroot, file ownership in the image) and the packages `sh .ci/install --test`
installs. The Debian bootstrap is cached (~/.cache/mycelium, or $MYCELIUM_CACHE), so a
rebuild after a code change reuses it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, choices=["x86", "rpi4", "rpi5"])
    p.add_argument("--network", metavar="DIR", help="personalise for this network (made by "
                   "`mycelium init`): its identity, seed spore and a join token go into the "
                   "boot partition's mycelium/ folder; its users are baked in")
    p.add_argument("--out", default="dist", help="output directory (default: dist/)")
    p.add_argument("--name", help="image name (default: mycelium-BOARD[-NODE])")
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
    p.add_argument("--k3s-artifact", default="", help="path or URL of the K3s binary "
                   "(recorded in the manifest; installed by the agent when a state needs it)")
    p.add_argument("--no-xz", action="store_true", help="skip the .img.xz")
    p.add_argument("--work", help="work directory (default: a temporary one)")
    args = p.parse_args(argv)

    from image.boards import get_board
    from image.build import BuildContext, build_image
    from image.errors import BuildError

    if os.geteuid() != 0:
        print("build.py: needs root (mmdebstrap, chroot, ownership in the image); "
              "run it with sudo", file=sys.stderr)
        return 1
    board = get_board(args.board)
    name = args.name or "-".join(x for x in ("mycelium", args.board, args.node_name) if x)
    with tempfile.TemporaryDirectory(prefix="mycelium-build-") as tmp:
        ctx = BuildContext(board, Path(args.out), Path(args.work or tmp),
                           Path(args.network) if args.network else None, args.node_name,
                           args.first_node, args.listen, tuple(args.join), args.k3s_artifact,
                           not args.no_xz, name,
                           network_files=tuple(Path(f) for f in args.network_config))
        try:
            build_image(ctx)
        except BuildError as e:
            print(f"build.py: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
