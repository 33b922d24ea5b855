"""Inputs of the deploys, as plain frozen data.

The agent's planner (agent/desired/plan.py) and the image builder (image/) both build these, so the
recipes never read network.yaml or host data themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class User:
    """A login account; network.yaml's `users:` entries are parsed into these."""

    name: str
    ssh_keys: tuple[str, ...] = ()
    sudo: bool = False


@dataclass(frozen=True)
class BaseParams:
    hostname: str
    users: tuple[User, ...] = ()
    ntp_servers: tuple[str, ...] = ()
    journal_max_mb: int = 64


@dataclass(frozen=True)
class AgentParams:
    wheelhouse: str = "/opt/mycelium/wheels"  # wheels of mycelium and its dependencies
    venv: str = "/opt/mycelium/venv"
    data_dir: str = "/var/lib/mycelium"
    listen: str = "0.0.0.0:7946"
    running: bool = True  # False while building an image: the unit starts at first boot


@dataclass(frozen=True)
class K3sParams:
    role: Literal["server", "agent"]
    binary: str  # path on the controller or http(s) URL
    binary_sha256: str
    images: str = ""
    images_sha256: str = ""
    server_url: str = ""  # agents: https://HOST:6443
    token: str = ""
    node_name: str = ""
    manifests: dict[str, str] = field(default_factory=dict)  # servers: name -> YAML


@dataclass(frozen=True)
class ContainersParams:
    manifests: dict[str, str] = field(default_factory=dict)  # name -> Kubernetes YAML


@dataclass(frozen=True)
class VmRuntimeParams:
    """The VM runtime's packages (the agent itself supervises the VMs)."""

    packages: tuple[str, ...] = ("qemu-system-x86", "qemu-utils")


# catatonit is podman's pause-process init: only a Recommends, which nodes skip
PODMAN_PACKAGES = ("podman", "catatonit")
# What `build.py --preinstall` can bake into an image, so that a node's first apply of
# that component needs no package download (offline sites, slow boards, boot tests)
PREINSTALL = {"podman": PODMAN_PACKAGES, "qemu": VmRuntimeParams().packages}


@dataclass(frozen=True)
class BootParams:
    """What only a built image needs: mounts and the first-boot service."""

    boot_label: str = "MYCBOOT"
    boot_mount: str = "/boot/efi"
    data_dir: str = "/var/lib/mycelium"
    port: int = 7946
    venv: str = "/opt/mycelium/venv"  # where the agent recipe installed `mycelium`
    consoles: tuple[str, ...] = ()  # terminals the dashboard runs on: tty1, the serial tty


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
