"""Primary spore rigs: pysyncobj stores in this process, or sclerotia as separate processes
(support/primary_node.py) that a test can SIGKILL and restart on their data dirs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.raft.store import PrimaryStore

ROOT = Path(__file__).resolve().parents[2]
NODE = Path(__file__).with_name("primary_node.py")
SECRET = b"s" * 32


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback (all held open while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ports(n: int) -> list[str]:
    return [f"127.0.0.1:{p}" for p in free_ports(n)]


def wait(pred: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def start(addrs: list[str], base: Path) -> list[PrimaryStore]:
    """One in-process store per address, each with the others as its Raft peers."""
    return [PrimaryStore(a, [o for o in addrs if o != a], SECRET, base / a.split(":")[1])
            for a in addrs]


def leader(stores: list[PrimaryStore]) -> PrimaryStore:
    wait(lambda: any(s._isLeader() for s in stores))
    return next(s for s in stores if s._isLeader())


def stop(stores: list[PrimaryStore]) -> None:
    for s in stores:
        s.destroy()


class Conn:
    """One line-protocol connection to a node's control port."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def call(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        reply = self.rfile.readline()
        if not reply:
            raise ConnectionError("node closed the connection")
        return reply.decode().strip()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


class NodeProcess:
    """One sclerotium as a separate process (support/primary_node.py), restartable on its
    data dir."""

    def __init__(self, addr: str, others: list[str], data_dir: Path, control: int,
                 log: Path, conf: dict | None = None) -> None:
        self.addr, self.others, self.data_dir = addr, others, data_dir
        self.control, self.log, self.conf = control, log, conf or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE), self.addr, ",".join(self.others),
                 str(self.data_dir), SECRET.hex(), str(self.control)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PRIMARY_NODE_CONF": json.dumps(self.conf)})

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def reap(self) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def read(self) -> dict | None:
        """The node's state, or None if it is down or not answering yet."""
        try:
            c = Conn(self.control, timeout=2.0)
        except OSError:
            return None
        try:
            reply = c.call("read")
        except OSError:
            return None
        finally:
            c.close()
        return json.loads(reply) if reply.startswith("{") else None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return f"--- {self.addr} ({self.log}) ---\n" + "\n".join(text)


class ProcessCluster:
    """`n` sclerotia as processes on loopback; the context kills and reaps them all."""

    def __init__(self, n: int, base: Path, conf: dict | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * n)
        addrs = [f"127.0.0.1:{p}" for p in ports[:n]]
        self.nodes = [NodeProcess(a, [o for o in addrs if o != a], base / f"n{i}", ports[n + i],
                           base / f"n{i}.log", conf) for i, a in enumerate(addrs)]

    def __enter__(self) -> ProcessCluster:
        for node in self.nodes:
            node.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            node.reap()

    def tails(self) -> str:
        return "\n".join(n.tail() for n in self.nodes)

    def wait_ready(self, timeout: float = 15.0) -> tuple[NodeProcess, dict]:
        """A leader whose own term's no-op is applied: all earlier commits are applied on it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            best = None
            for node in self.nodes:
                st = node.read()
                if st and st["ready"] and (best is None or st["term"] > best[1]["term"]):
                    best = (node, st)
            if best:
                return best
            time.sleep(0.01)
        raise AssertionError(f"no ready leader within {timeout} s\n{self.tails()}")

    def wait_agree(self, timeout: float = 15.0) -> list[dict]:
        """Every node has applied the leader's commit index and holds the same envelope."""
        end = time.monotonic() + timeout
        states: list[dict | None] = []
        while time.monotonic() < end:
            states = [n.read() for n in self.nodes]
            if all(states):
                lead = [s for s in states if s["ready"]]
                if (len(lead) == 1 and all(s["last_applied"] >= lead[0]["commit_idx"]
                                           for s in states)
                        and len({(s["version"], s["sha256"], tuple(s["members"]))
                                 for s in states}) == 1):
                    return states
            time.sleep(0.02)
        raise AssertionError(f"nodes did not agree within {timeout} s: {states}\n{self.tails()}")
