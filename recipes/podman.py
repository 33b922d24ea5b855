"""Operation running an endomycete's Kubernetes manifest with `podman kube play`.

The manifest is kept in /etc/mycelium/kube/NAME.yaml; it is played again when its content
changes or its pod is not running (drift), and taken down when the service leaves the state.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files

from recipes.facts import PodmanPods
from recipes.names import name_path

KUBE_DIR = "/etc/mycelium/kube"


def manifest_path(name: str) -> str:
    return name_path(KUBE_DIR, name, ".yaml")


def service_pods(pods: dict[str, dict], svc: str) -> dict[str, dict]:
    """kube play names a Deployment's pods SVC-pod-0, SVC-pod-1... (a bare Pod: SVC-pod)."""
    return {n: p for n, p in pods.items() if n == f"{svc}-pod" or n.startswith(f"{svc}-pod-")}


@operation()
def kube(svc: str, manifest: str = "", present: bool = True) -> Generator:
    """Run (or with present=False remove) the pods of `manifest` under the name `svc`."""
    path = manifest_path(svc)
    held = host.get_fact(Sha256File, path=path)
    pods = service_pods(host.get_fact(PodmanPods), svc)
    if not present:
        if held is None and not pods:
            host.noop(f"{svc}: not running")
            return
        if held is not None:
            yield f"podman kube down {shlex.quote(path)} || true"
            yield f"rm -f {shlex.quote(path)}"
        else:  # pods without their manifest: remove them by name
            yield f"podman pod rm -f {' '.join(shlex.quote(n) for n in sorted(pods))}"
        return
    want = hashlib.sha256(manifest.encode()).hexdigest()
    running = bool(pods) and all(p["status"] == "Running" for p in pods.values())
    if held == want and running:
        host.noop(f"{svc}: running, manifest unchanged")
        return
    if held != want:
        yield from files.put._inner(src=StringIO(manifest), dest=path, mode="644",
                                    create_remote_dir=True)
    yield f"podman kube play --replace {shlex.quote(path)}"
