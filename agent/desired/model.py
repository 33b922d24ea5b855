"""Typed desired state: what a verified network.yaml (schema v1) says.

These frozen dataclasses are the contract between the schema parser (agent/desired/schema.py),
placement, planning and the recipes. Everything downstream reads these, never raw YAML.
Defaults here are the documented defaults of schema v1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recipes.params import User

Role = Literal["sclerotium", "rhizomorph", "hypha"]
SclerotiumMode = Literal["dedicated", "dynamic"]
Runtime = Literal["k3s", "podman"]
Curve = Literal["linear", "exponential", "custom"]


@dataclass(frozen=True)
class Node:
    name: str
    role: Role = "rhizomorph"
    mode: SclerotiumMode | None = None  # only for sclerotia; "dedicated" by default
    labels: dict[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()  # host:port the agent listens on, if fixed
    runtime: Runtime | None = None  # None: K3s if components.k3s is set, else podman
    memory_mb: int | None = None  # RAM the node has for VMs, when the operator says


@dataclass(frozen=True)
class PrimarySettings:
    target_sclerotia: int = 3


@dataclass(frozen=True)
class SeedSettings:
    locations: tuple[str, ...] = ()  # URLs or file paths of spore.json


@dataclass(frozen=True)
class LatentSettings:
    interval_ms: int = 200
    fanout: int = 3


@dataclass(frozen=True)
class Spores:
    primary: PrimarySettings = PrimarySettings()
    seed: SeedSettings = SeedSettings()
    latent: LatentSettings = LatentSettings()


@dataclass(frozen=True)
class K3sArtifact:
    """Where the K3s binary and airgap images come from (path or URL, with SHA-256)."""

    binary: str = ""
    binary_sha256: str = ""
    images: str = ""
    images_sha256: str = ""


@dataclass(frozen=True)
class Components:
    k3s: K3sArtifact = K3sArtifact()
    vm_runtime: bool = True
    ram_replication: bool = True


@dataclass(frozen=True)
class Port:
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    target: int | None = None


@dataclass(frozen=True)
class Endomycete:
    """Containerised service: Kubernetes manifests run by K3s (or podman kube play)."""

    name: str
    image: str = ""
    replicas: int = 1
    ports: tuple[Port, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    manifest: str = ""  # raw Kubernetes YAML passed through as-is
    labels: dict[str, str] = field(default_factory=dict)  # node selector


@dataclass(frozen=True)
class Throttle:
    """How hard the VM is slowed when replication falls behind (dirty rate vs. link)."""

    curve: Curve = "linear"
    threshold: float = 0.8  # fraction of replication budget where throttling starts
    points: tuple[tuple[float, float], ...] = ()  # custom curve: (load, throttle) pairs
    emergency_pause: bool = True


@dataclass(frozen=True)
class Endophyte:
    """Service run as a VM with active-passive RAM replication to backup nodes."""

    name: str
    image: str = ""  # disk: a path on the node or an http(s) URL (then image_sha256 is set)
    cpus: int = 1
    memory_mb: int = 512
    backups: int = 1
    replication_interval_ms: int = 1000
    throttle: Throttle = Throttle()
    labels: dict[str, str] = field(default_factory=dict)
    image_sha256: str = ""  # checked before the VM starts; required for a URL
    kernel: str = ""  # direct boot: a path on the node (with initrd and cmdline)
    initrd: str = ""
    cmdline: str = ""
    ports: tuple[Port, ...] = ()  # forwarded from the node to the VM (target: guest port)


@dataclass(frozen=True)
class Release:
    """The agent release every node should run: a content-addressed artifact."""

    version: str  # the mycelium wheel's version inside it
    sha256: str  # of the whole artifact (what `mycelium release create` prints)
    url: str = ""  # http(s) URL or path; used only when no peer holds it


@dataclass(frozen=True)
class RolloutPolicy:
    """How a new release reaches the nodes: waves, then the gate (agent/desired/rollout.py)."""

    waves: tuple[str, ...] = ("1", "50%", "all")  # node counts, percentages or "all"
    healthy_seconds: int = 30  # a wave's nodes healthy this long before the next wave
    wave_deadline_seconds: int = 600  # a wave not through its gate by then fails
    auto_rollback: bool = False  # a failed wave's nodes return to the previous release


@dataclass(frozen=True)
class DesiredState:
    network: str
    nodes: tuple[Node, ...] = ()
    users: tuple[User, ...] = ()
    spores: Spores = Spores()
    components: Components = Components()
    endomycetes: tuple[Endomycete, ...] = ()
    endophytes: tuple[Endophyte, ...] = ()
    revoked: tuple[str, ...] = ()  # SHA-256 fingerprints of revoked node certificates
    release: Release | None = None  # None: nodes keep the agent they run
    rollout: RolloutPolicy | None = None  # None: every node takes a new release at once

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True)
class NodeShare:
    """One node's share of the placement, as committed by the Raft leader.

    Produced by agent/desired/placement.py, consumed by agent/desired/plan.py. `k3s_role` is
    None on hyphae and on nodes whose runtime is podman. `role`, `runtime` and
    `runtime_reason` say what the placement assumed of the node ("" in placements made
    before they were recorded).
    """

    node: str
    k3s_role: Literal["server", "agent"] | None = None
    k3s_server_url: str = ""  # https://HOST:6443 of a sclerotium, for agents
    endomycetes: tuple[str, ...] = ()  # services this node runs (podman) or may host (k3s)
    endophytes_primary: tuple[str, ...] = ()  # VMs this node runs
    endophytes_backup: tuple[str, ...] = ()  # VMs whose memory this node receives
    placement_version: int = 0
    role: str = ""
    runtime: str = ""
    runtime_reason: str = ""  # why that runtime: "no components.k3s", "nodes: entry", ...
