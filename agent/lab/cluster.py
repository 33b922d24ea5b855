"""Throw-away local networks: N agents on this machine, as processes on loopback or one
network namespace each (joined by veth pairs to a bridge). `mycelium cluster up` is how a
newcomer tries mycelium in a minute, and what the multi-node tests build on.

Everything lives under one directory: the network (root keys stay there, as on an
operator's laptop), one data dir and log per node, and cluster.json recording pids and
namespaces so `cluster down` can undo exactly what `up` did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from agent.authoring.bootstrap import bootstrap_first_node
from agent.authoring.identity import init_network
from agent.errors import ConfigError, PeerError
from agent.statefile import atomic_write
from agent.trust.tokens import create_token

SUBNET = "10.77.0"
BRIDGE = "mycbr0"
TOKEN_FILE = "join.token"


@dataclass
class ClusterNode:
    name: str
    role: str
    addr: str
    data_dir: str
    log: str
    pid: int = 0
    netns: str = ""
    argv: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    dir: str
    nodes: list[ClusterNode]
    netns: bool = False

    @property
    def network(self) -> Path:
        return Path(self.dir) / "network"

    def addresses(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def save(self) -> None:
        (Path(self.dir) / "cluster.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        p = directory / "cluster.json"
        if not p.exists():
            raise ConfigError(f"{directory} holds no cluster (no cluster.json)")
        d = json.loads(p.read_text())
        return cls(d["dir"], [ClusterNode(**n) for n in d["nodes"]], d.get("netns", False))


def free_port_pair() -> int:
    """A port P with P+1 and P+2 also free (the agent serves enrolment on P+1, Raft on P+2)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 65000 and all(_free(p + i) for i in (1, 2)):
            return p
    raise ConfigError("no free port triple on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def roles_for(n: int, sclerotia: int) -> list[str]:
    return ["sclerotium" if i < sclerotia else "rhizomorph" for i in range(n)]


def agent_argv(node: ClusterNode, seed: Path, token: str | None, extra: list[str]) -> list[str]:
    """The agent's command line; a join token goes to a file (ps shows argv to everyone)."""
    argv = [sys.executable, "-m", "agent.cli", "agent", "run", "--data-dir", node.data_dir,
            "--listen", node.addr, "--name", node.name, "--seed-spore", str(seed)] + extra
    if token:
        argv += ["--token-file", str(write_token_file(node, token))]
    if node.netns:
        argv = ["ip", "netns", "exec", node.netns] + argv
    return argv


def write_token_file(node: ClusterNode, token: str) -> Path:
    """The token in the node's data dir, 0600; the agent deletes it once enrolled."""
    path = Path(node.data_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, token.encode() + b"\n", 0o600)
    return path


def start_node(node: ClusterNode, argv: list[str]) -> None:
    node.argv = argv
    with open(node.log, "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    node.pid = proc.pid


def wait_ready(node: ClusterNode, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(node.log).read_text(errors="replace") if Path(node.log).exists() else ""
        if "mycelium agent ready" in text:
            return
        if node.pid and not pid_alive(node.pid):
            tail = text.strip().splitlines()[-3:]
            raise PeerError(f"{node.name} exited before ready: {' | '.join(tail)}")
        time.sleep(0.1)
    raise PeerError(f"{node.name} not ready after {timeout:.0f}s; see {node.log}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child counts as dead
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def cluster_up(directory: Path, n: int, netns: bool = False, sclerotia: int = 3,
               extra_args: list[str] | None = None, progress=print) -> Cluster:
    directory = directory.resolve()
    if (directory / "cluster.json").exists():
        raise ConfigError(f"{directory} already holds a cluster; `mycelium cluster down "
                          f"--dir {directory}` first")
    if n < 1:
        raise ConfigError("--nodes must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    net = init_network(directory / "network", "local")
    progress(f"network 'local' created in {net.path}")
    cluster = Cluster(str(directory), [], netns)
    if netns:
        from agent.lab.netns import setup_bridge

        setup_bridge(BRIDGE, f"{SUBNET}.254/24")
    roles = roles_for(n, sclerotia)
    for i in range(n):
        name = f"n{i + 1}"
        ns = f"myc-{name}" if netns else ""
        addr = f"{SUBNET}.{i + 1}:7946" if netns else f"127.0.0.1:{free_port_pair()}"
        ndir = directory / "nodes" / name
        ndir.parent.mkdir(parents=True, exist_ok=True)
        node = ClusterNode(name, roles[i], addr, str(ndir), str(directory / f"{name}.log"),
                           netns=ns)
        if netns:
            from agent.lab.netns import add_host

            add_host(ns, BRIDGE, f"{SUBNET}.{i + 1}/24", f"veth-{name}")
        cluster.nodes.append(node)
    cluster.save()
    first = cluster.nodes[0]
    bootstrap_first_node(net, Path(first.data_dir), first.name, first.addr)
    start_node(first, agent_argv(first, net.spore_json, None, extra_args or []))
    cluster.save()
    wait_ready(first)
    progress(f"{first.name} ({first.role}) ready on {first.addr}")
    root = net.root()
    keys = net.signing_keys(root)[: root.role("root").threshold]
    for node in cluster.nodes[1:]:
        token = create_token(root, keys, node.role, timedelta(hours=1), node.name)
        start_node(node, agent_argv(node, net.spore_json, token, extra_args or []))
        cluster.save()
    for node in cluster.nodes[1:]:
        wait_ready(node)
        progress(f"{node.name} ({node.role}) ready on {node.addr}")
    return cluster


def restart_node(cluster: Cluster, name: str) -> ClusterNode:
    """Start a stopped node again with its data dir (it rejoins without a token)."""
    node = next(n for n in cluster.nodes if n.name == name)
    argv = [a for a in node.argv]
    for flag in ("--token", "--token-file"):
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    start_node(node, argv)
    cluster.save()
    return node


def kill_node(node: ClusterNode, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(node.pid, sig)
    except ProcessLookupError:
        pass


def cluster_down(directory: Path) -> None:
    import shutil

    cluster = Cluster.load(directory.resolve())
    for node in cluster.nodes:
        kill_node(node, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for node in cluster.nodes:
        while node.pid and pid_alive(node.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_node(node, signal.SIGKILL)
    if cluster.netns:
        from agent.lab.netns import teardown

        teardown([n.netns for n in cluster.nodes], BRIDGE)
    shutil.rmtree(directory)


def env_lines(cluster: Cluster) -> str:
    return (f"export MYCELIUM_NETWORK={cluster.network}\n"
            f"export MYCELIUM_NODES={','.join(cluster.addresses())}")

