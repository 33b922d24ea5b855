"""Kubernetes manifests for endomycetes: the same YAML for K3s and `podman kube play`.

K3s gets a Deployment with all replicas plus a LoadBalancer Service (K3s' service load
balancer opens the port on every node). Podman runs one replica per node (placement
spreads them), so its Deployment has one replica and publishes the port on the host.
A raw `manifest:` from network.yaml is passed through as written; `manifest_warnings`
reads it only to say, at validate time, what would silently not happen: a kind `podman
kube play` skips (StatefulSet, StorageClass, ClusterRole, ...) on a podman node, or a
`replicas:` inside it that disagrees with the service's own (mycelium places the
service's count; K3s would run the manifest's).
"""

from __future__ import annotations

from typing import Any

from agent.desired.model import Endomycete
from agent.errors import DataError
from agent.trust.encoding import dump_yaml, load_yaml_all

# What `podman kube play` runs (podman-kube-play(1)); a Service is accepted and ignored
# (podman publishes hostPorts instead), every other kind is skipped without an error.
PODMAN_KINDS = frozenset({"Pod", "Deployment", "DaemonSet", "Job", "PersistentVolumeClaim",
                          "ConfigMap", "Secret", "Service"})


def _container(svc: Endomycete, host_ports: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": svc.name, "image": svc.image}
    if svc.image.startswith("localhost/"):
        c["imagePullPolicy"] = "Never"  # built locally: there is no registry to pull from
    if svc.env:
        c["env"] = [{"name": k, "value": v} for k, v in sorted(svc.env.items())]
    if svc.ports:
        c["ports"] = []
        for p in svc.ports:
            port: dict[str, Any] = {"containerPort": p.target or p.port,
                                    "protocol": p.protocol.upper()}
            if host_ports:
                port["hostPort"] = p.port
            c["ports"].append(port)
    return c


def _deployment(svc: Endomycete, replicas: int, host_ports: bool) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": svc.name, "app.kubernetes.io/managed-by": "mycelium"}
    spec: dict[str, Any] = {"containers": [_container(svc, host_ports)]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": svc.name, "labels": labels},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": spec}}}


def k3s_manifest(svc: Endomycete) -> str:
    if svc.manifest:
        return svc.manifest
    docs = [_deployment(svc, svc.replicas, host_ports=False)]
    if svc.ports:
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc.name},
                     "spec": {"type": "LoadBalancer",
                              "selector": {"app.kubernetes.io/name": svc.name},
                              "ports": [{"name": f"p{p.port}", "port": p.port,
                                         "targetPort": p.target or p.port,
                                         "protocol": p.protocol.upper()}
                                        for p in svc.ports]}})
    return "---\n".join(dump_yaml(d).decode() for d in docs)


def podman_manifest(svc: Endomycete) -> str:
    if svc.manifest:
        return svc.manifest
    return dump_yaml(_deployment(svc, 1, host_ports=True)).decode()


def manifest_warnings(svc: Endomycete, podman_nodes: list[str]) -> list[str]:
    """What in `svc.manifest` will not run as written; podman_nodes are the nodes that could
    run it with podman. Empty for a generated manifest (it is always runnable)."""
    if not svc.manifest:
        return []
    try:
        docs = load_yaml_all(svc.manifest.encode(), "manifest")
    except DataError as e:
        return [f"the manifest cannot be read ({e}); K3s and podman will refuse it too"]
    found = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind, meta = doc.get("kind"), doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        what = f"{kind} {name!r}" if name else str(kind)
        if podman_nodes and isinstance(kind, str) and kind not in PODMAN_KINDS:
            found.append(f"{what}: podman cannot run a {kind}, and {', '.join(podman_nodes)} "
                         f"run{'s' if len(podman_nodes) == 1 else ''} this service with "
                         "podman (it would be skipped); use runtime: k3s there")
        spec = doc.get("spec")
        replicas = spec.get("replicas") if isinstance(spec, dict) else None
        if isinstance(replicas, int) and not isinstance(replicas, bool) \
                and replicas != svc.replicas:
            found.append(f"{what} asks for replicas: {replicas} but the service has replicas: "
                         f"{svc.replicas}; set the same number in both")
    return found
