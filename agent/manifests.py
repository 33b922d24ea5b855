"""Kubernetes manifests for endomycetes: the same YAML for K3s and `podman kube play`.

K3s gets a Deployment with all replicas plus a LoadBalancer Service (K3s' service load
balancer opens the port on every node). Podman runs one replica per node (placement
spreads them), so its Deployment has one replica and publishes the port on the host.
A raw `manifest:` from network.yaml is passed through as written.
"""

from __future__ import annotations

from typing import Any

from agent.desired import Endomycete
from agent.serial import dump_yaml


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
