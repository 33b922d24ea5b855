"""Network namespaces for local multi-host networks: one namespace per node, a veth pair
from each into a bridge in the host namespace (so the operator on the host reaches all of
them), and link cuts by setting a veth down. Needs root and iproute2."""

from __future__ import annotations

import subprocess

from agent.errors import ConfigError


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ConfigError("`ip` not found: install iproute2") from e
    except subprocess.CalledProcessError as e:
        raise ConfigError(f"ip {' '.join(args)}: {e.stderr.strip()} (network namespaces "
                          "need root)") from e


def setup_bridge(bridge: str, cidr: str = "") -> None:
    """A bridge, with an address for the host when `cidr` is given."""
    if ip("link", "show", bridge, check=False).returncode != 0:
        ip("link", "add", bridge, "type", "bridge")
        if cidr:
            ip("addr", "add", cidr, "dev", bridge)
    ip("link", "set", bridge, "up")


def add_host(ns: str, bridge: str, cidr: str, veth: str) -> None:
    """Namespace `ns` with address `cidr` on a veth whose host end is in `bridge`."""
    ip("netns", "del", ns, check=False)
    ip("link", "del", veth, check=False)
    ip("netns", "add", ns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", veth, "master", bridge)
    ip("link", "set", veth, "up")
    ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")


def set_link(veth: str, up: bool) -> None:
    """Cut or heal one node's link (its host-side veth end)."""
    ip("link", "set", veth, "up" if up else "down")


def move_to_bridge(veth: str, bridge: str) -> None:
    """Partition: nodes moved to another bridge reach each other but no one else."""
    ip("link", "set", veth, "master", bridge)


def teardown(namespaces: list[str], bridge: str) -> None:
    for ns in namespaces:
        if ns:
            ip("netns", "del", ns, check=False)
            ip("link", "del", f"veth-{ns.removeprefix('myc-')}", check=False)
    ip("link", "del", bridge, check=False)
