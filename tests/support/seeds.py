"""A seed directory as `mycelium seed serve` keeps it, and three spores to offer it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from agent.authoring.bootstrap import add_bootstrap_address
from agent.authoring.identity import init_network
from agent.authoring.netdir import NetworkDir


class SeedDir(NamedTuple):
    net: NetworkDir
    seed: Path
    v1: bytes  # the network's first spore
    v2: bytes  # one version up (a bootstrap address added)
    other: bytes  # another network's spore


def seed_dir(tmp_path: Path) -> SeedDir:
    net = init_network(tmp_path / "net", "home")
    seed = tmp_path / "seed"
    seed.mkdir()
    for f in ("roots/1.root.json", "ca.crt", "spore.json"):
        shutil.copy(net.path / f, seed / f.split("/")[-1].replace("1.root", "root"))
    v1 = net.spore_json.read_bytes()
    add_bootstrap_address(net, "10.0.0.1:7946")
    v2 = net.spore_json.read_bytes()
    other = init_network(tmp_path / "other", "home").spore_json.read_bytes()
    return SeedDir(net, seed, v1, v2, other)
