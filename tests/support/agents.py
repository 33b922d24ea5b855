"""Real agent processes on loopback (agent/lab/cluster.py), driven the way an operator
drives them: over the node API with the operator's certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.authoring.netdir import NetworkDir
from agent.authoring.reach import operator_hypha
from agent.errors import PeerError
from agent.lab.cluster import Cluster
from agent.raft.membership import raft_addr

T = TypeVar("T")

GOSSIP = ["--gossip-interval", "0.2"]  # fast gossip, so tests converge in seconds
LOGS = Path("/tmp/mycelium-test-logs")

# Five nodes, two dedicated sclerotia and a target of three (the leader promotes a
# rhizomorph), and a two-replica podman service to place. SEED: where the seed spore goes.
BACKBONE_YAML = """\
schema: 1
network: {name: local}
nodes:
  - {name: n1, role: sclerotium, runtime: k3s}
  - {name: n2, role: sclerotium, runtime: k3s}
  - {name: n3, role: rhizomorph, runtime: podman}
  - {name: n4, role: rhizomorph, runtime: podman}
  - {name: n5, role: rhizomorph, runtime: podman}
spores:
  primary: {target_sclerotia: 3}
  seed: {locations: [SEED]}
services:
  endomycetes:
    web: {image: localhost/web:1, replicas: 2}
"""


def keep_logs(c: Cluster, prefix: str = "") -> None:
    """Agent logs survive teardown for post-mortems of a failed run, as PREFIX-NODE.log
    (the test module's name: a later module's n1 no longer overwrites this one's)."""
    LOGS.mkdir(exist_ok=True)
    for n in c.nodes:
        if Path(n.log).exists():
            name = Path(n.log).name
            shutil.copy(n.log, LOGS / (f"{prefix}-{name}" if prefix else name))


def call(net: NetworkDir, addrs: list[str], method: str, path: str,
         data: bytes | None = None) -> tuple[str, int, Any]:
    """(address that answered, HTTP status, JSON body) from the first of `addrs` to answer."""
    async def go() -> tuple[str, int, Any]:
        async with operator_hypha(net, addrs) as h:
            return await h.call(method, path, data)

    return asyncio.run(go())


def api(c: Cluster, path: str, addr: str | None = None) -> Any:
    """GET `path` from `addr` (any node when None); anything but 200 raises PeerError."""
    async def go() -> Any:
        async with operator_hypha(NetworkDir(c.network), c.addresses()) as h:
            return await h.get(path, addr)

    return asyncio.run(go())


def post_envelope(c: Cluster, data: bytes, addr: str) -> tuple[str, int, Any]:
    return call(NetworkDir(c.network), [addr], "POST", "/api/v1/envelope", data)


def status(c: Cluster, path: str, addr: str) -> int:
    """The HTTP status `addr` answers a GET of `path` with."""
    return call(NetworkDir(c.network), [addr], "GET", path)[1]


def wait_for(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """The first truthy value `pred` returns, polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last}")


def node_vms(c: Cluster, name: str) -> dict:
    """Node `name`'s /api/v1/vms: the VMs it runs and the checkpoints it holds."""
    return api(c, "/api/v1/vms", next(n for n in c.nodes if n.name == name).addr)


def states(c: Cluster, addr: str) -> dict[str, str]:
    """Member name -> SWIM state (alive, suspect, dead) as `addr` sees them."""
    return {m["name"]: m["state"] for m in api(c, "/api/v1/members", addr)}


def versions(c: Cluster) -> dict[str, int]:
    return {n.name: api(c, "/api/v1/state", n.addr)["version"] for n in c.nodes}


def primary(c: Cluster, name: str) -> dict | None:
    """Node `name`'s view of the Primary spore, None when it runs no Raft."""
    node = next(n for n in c.nodes if n.name == name)
    if status(c, "/api/v1/primary", node.addr) != 200:
        return None
    try:
        return api(c, "/api/v1/primary", node.addr)
    except PeerError:  # its Raft side stopped between the two requests
        return None


def leader_view(c: Cluster, alive: list[str] | None = None) -> dict | None:
    """The Primary as its leader reports it (None while there is none)."""
    for n in c.nodes:
        if alive is not None and n.name not in alive:
            continue
        try:
            view = primary(c, n.name)
        except Exception:
            continue
        if view and view["leader"] == raft_addr(n.addr) and not view["possibly_stale"]:
            return view
    return None


def web_hosts(view: dict) -> list[str]:
    """The nodes the leader's committed placement runs BACKBONE_YAML's web service on."""
    return sorted(n for n, s in view["placement"]["shares"].items() if "web" in s["endomycetes"])


def enrol_at(addr: str, token: str, name: str) -> tuple[int, dict]:
    """POST a join request straight to one node's enrolment port (what the joiner sends)."""
    import aiohttp

    from agent.node.enrol import ENROL_PATH, enrol_port
    from agent.trust import pki

    body = {"token": token, "csr": pki.make_csr(pki.new_private_key(), name).decode(),
            "node_name": name, "addresses": ["127.0.0.1"]}

    async def go():
        anon = ssl.create_default_context()
        anon.check_hostname, anon.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession() as s:
            async with s.post(f"https://{enrol_port(addr)}{ENROL_PATH}/join", json=body,
                              ssl=anon) as r:
                return r.status, await r.json()

    return asyncio.run(go())


def rollout_cli(c: Cluster, action: str, *flags: str) -> str:
    """`mycelium rollout ACTION [FLAGS]` against the cluster, as the operator runs it."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "agent.cli", "rollout", action, *flags,
                           "--to", ",".join(c.addresses()), "--network", str(c.network)],
                          capture_output=True, text=True, check=True).stdout
