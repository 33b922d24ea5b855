"""A node's plan: which deploys it runs and with what, as a pure function.

Inputs are the verified desired state, this node's share of the placement (from the
Primary spore, or computed from live members when no Primary answers) and node-local
settings. Components are in the plan only when the state needs them on this node, and a
component left out is unloaded by its deploy (recipes/deploys.py gets None). What cannot be
done yet (no K3s artifact, no server to join) is listed in `waiting` with the reason,
instead of failing the whole apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent.desired.manifests import k3s_manifest, podman_manifest
from agent.desired.model import DesiredState, NodeShare
from agent.desired.placement import live_members, place, runtime_for
from recipes.params import (
    AgentParams,
    BaseParams,
    ContainersParams,
    K3sParams,
    User,
    VmRuntimeParams,
)

if TYPE_CHECKING:
    from recipes.run import Step


@dataclass(frozen=True)
class NodeSettings:
    """What a node knows about itself that network.yaml does not say."""

    agent: AgentParams = AgentParams()
    k3s_token: str = ""  # from the Primary spore; agents cannot join K3s without it


@dataclass(frozen=True)
class NodePlan:
    node: str
    role: str
    version: int
    components: tuple[str, ...]
    base: BaseParams
    agent: AgentParams
    k3s: K3sParams | None = None
    containers: ContainersParams | None = None
    waiting: tuple[str, ...] = ()
    share: dict[str, Any] = field(default_factory=dict)
    vm_runtime: VmRuntimeParams | None = None
    content: str = ""  # content_id of the state planned from (agent/desired/staged.py)

    def steps(self) -> list[Step]:
        from recipes import deploys  # pyinfra is loaded only by the apply subprocess

        return [(deploys.base, (self.base,)), (deploys.agent, (self.agent,)),
                (deploys.k3s, (self.k3s,)), (deploys.containers, (self.containers,)),
                (deploys.vm_runtime, (self.vm_runtime,))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assumed_share(state: DesiredState, node: str, role: str = "",
                  host: str = "") -> NodeShare:
    """The share `node` would get if it and every node in the state were alive (operator
    view). A node not in `nodes:` (it joined with a token) is placed with `role`, or as a
    rhizomorph when the role is not known."""
    seen = {n.name: (n.role, n.addresses[0].rsplit(":", 1)[0] if n.addresses else n.name)
            for n in state.nodes}
    if node not in seen or role:
        seen[node] = (role, host or seen.get(node, ("", node))[1])
    return place(state, live_members(state, seen))[node]


def plan_node(state: DesiredState, version: int, node_name: str, share: NodeShare,
              settings: NodeSettings = NodeSettings()) -> NodePlan:
    """The plan of one member. It need not be in `nodes:` (a joined node): its role and
    runtime come from its share, falling back to its `nodes:` entry and the defaults."""
    listed = state.node(node_name)
    runtime, why = runtime_for(state, node_name)
    if not share.runtime:  # a placement made before shares recorded them
        share = replace(share, runtime=runtime, runtime_reason=why)
    if not share.role:
        share = replace(share, role=listed.role if listed else "rhizomorph")
    components = ["base", "agent"]
    waiting: list[str] = []
    k3s = None
    vm_runtime = None
    art = state.components.k3s
    if share.k3s_role and state.endomycetes:
        if not (art.binary and art.binary_sha256):
            waiting.append("k3s: set components.k3s.binary and binary_sha256 in network.yaml")
        elif share.k3s_role == "agent" and not (share.k3s_server_url and settings.k3s_token):
            waiting.append("k3s: no server URL and token yet (from the Primary spore)")
        else:
            components.append(f"k3s-{share.k3s_role}")
            manifests = ({s.name: k3s_manifest(s) for s in state.endomycetes}
                         if share.k3s_role == "server" else {})
            k3s = K3sParams(share.k3s_role, art.binary, art.binary_sha256, art.images,
                            art.images_sha256, share.k3s_server_url, settings.k3s_token,
                            node_name, manifests)
    containers = None
    if share.runtime == "podman" and share.endomycetes:
        by_name = {s.name: s for s in state.endomycetes}
        containers = ContainersParams({n: podman_manifest(by_name[n])
                                       for n in share.endomycetes if n in by_name})
        components.append("podman")
    if share.endophytes_primary and not state.components.vm_runtime:
        waiting.append("vm-runtime: endophytes are placed here but components.vm_runtime "
                       "is false")
    elif share.endophytes_primary or (share.endophytes_backup and
                                      state.components.ram_replication):
        # QEMU installed here; the agent supervises the VMs. A backup of replicated VMs
        # gets it too, so a failover resumes at once instead of waiting for packages.
        components.append("vm")
        vm_runtime = VmRuntimeParams()
    return NodePlan(node_name, share.role, version, tuple(components),
                    BaseParams(node_name, state.users), settings.agent, k3s, containers,
                    tuple(waiting), asdict(share), vm_runtime)


def plan_from_dict(d: dict[str, Any]) -> NodePlan:
    """Inverse of NodePlan.to_dict (the agent hands plans to its apply subprocess as JSON)."""
    b = d["base"]
    base = BaseParams(b["hostname"], tuple(User(u["name"], tuple(u["ssh_keys"]), u["sudo"])
                                           for u in b["users"]),
                      tuple(b["ntp_servers"]), b["journal_max_mb"])
    k3s = K3sParams(**d["k3s"]) if d.get("k3s") else None
    containers = ContainersParams(**d["containers"]) if d.get("containers") else None
    vm = d.get("vm_runtime")
    return NodePlan(d["node"], d["role"], d["version"], tuple(d["components"]), base,
                    AgentParams(**d["agent"]), k3s, containers, tuple(d["waiting"]),
                    d.get("share", {}),
                    VmRuntimeParams(tuple(vm["packages"])) if vm else None,
                    str(d.get("content", "")))
