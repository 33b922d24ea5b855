"""Failover with memory kept, and the backup seat filled again: three real agents on
loopback, the tiny VM (a serial counter and a web page, TCG) with `backups: 1` and a
forwarded host port. n1 (the sclerotium, Raft leader) takes the endomycete, so the VM's
primary and backup are n2 and n3. The primary's agent is SIGKILLed (its QEMU dies with
it): the backup resumes the VM from its last checkpoint (the counter goes on, never from
1), the port answers again from the new primary's QEMU, and n1 is placed as the new
backup and seeded by the new primary with a full checkpoint, then incrementals. Should
the resumed QEMU die, its restart boots cold (not from the same checkpoint again). Its own
cluster: a planned move (tests/test_ramrep_migrate.py) runs two QEMUs at once, which
cannot forward one host port. In the default run; `-s` prints the figures."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import Cluster, ClusterNode, free_port_pair, kill_node
from support.agents import GOSSIP, post_envelope, wait_for
from support.agents import node_vms as vms
from support.checkpoints import counters
from support.tinyvm import GUEST_PORT, PAGE, page, replicated_state


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(3, sclerotia=1, extra_args=GOSSIP)


def node(c: Cluster, name: str) -> ClusterNode:
    return next(n for n in c.nodes if n.name == name)


def running(c: Cluster, name: str) -> dict | None:
    return next((v for v in vms(c, name)["vms"] if v["state"] == "running"), None)


def serial(c: Cluster, name: str) -> Path:
    return Path(node(c, name).data_dir) / "vms/tiny/serial.log"


def held(c: Cluster, name: str) -> dict | None:
    """The checkpoints of tiny node `name` holds as its backup."""
    return next((b for b in vms(c, name)["backups"] if b["vm"] == "tiny"), None)


def test_failover_resumes_and_seeds_a_new_backup(cluster: Cluster):
    port = free_port_pair()
    env = sign_state(NetworkDir(cluster.network), replicated_state(port))[1]
    assert post_envelope(cluster, env, cluster.nodes[0].addr)[1] == 200
    old = wait_for(lambda: next((n for n in ("n2", "n3") if running(cluster, n)), None), 120,
                   "tiny running on n2 or n3")
    new = "n3" if old == "n2" else "n2"
    wait_for(lambda: ((held(cluster, new) or {}).get("seq") or 0) >= 3, 120,
             f"checkpoints on {new}")
    assert not held(cluster, "n1"), "n1 is no backup while the primary lives"
    assert wait_for(lambda: page(port), 60, f"the page through {old}'s forward") == PAGE
    wait_for(lambda: len(counters(serial(cluster, old))) >= 3, 60, f"the counter on {old}")

    kill_node(node(cluster, old))  # SIGKILL: the agent, and its QEMU with it
    t_kill, wall_kill = time.monotonic(), time.time()
    at_kill = counters(serial(cluster, old))[-1]
    vm = wait_for(lambda: running(cluster, new), 120, f"tiny running on {new}")
    t_running = time.monotonic()
    assert vm["boot"].startswith("resumed from checkpoint"), vm
    seen = wait_for(lambda: counters(serial(cluster, new)), 30, f"the counter on {new}")
    assert seen[0] > 1, f"the VM booted cold on {new}: {seen}"
    assert seen == sorted(seen), seen

    # its port moved with it: the forward is the new QEMU's, and the guest's web server
    # (in the resumed memory) answers through it
    assert vm["ports"] == [f"{port}->{GUEST_PORT}/tcp"], vm
    cmdline = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert f"hostfwd=tcp::{port}-:{GUEST_PORT}" in cmdline, cmdline
    assert wait_for(lambda: page(port), 60, f"the page through {new}'s forward") == PAGE
    t_page = time.monotonic()

    # n1 is the new backup: the new primary's chain starts there with a full checkpoint,
    # and incrementals follow on it
    def seeded() -> dict | None:
        b, rep = held(cluster, "n1"), (running(cluster, new) or {}).get("replication")
        return b if b and rep and b["chain"] == rep["chain"] and b["chain_start"] \
            and (b["seq"] or 0) >= b["chain_start"]["seq"] + 2 else None
    b = wait_for(seeded, 120, "n1 taking the new primary's checkpoints")
    start = b["chain_start"]
    assert start["full"], b

    def incremental() -> dict | None:  # the last one shipped went to n1 alone, as a diff
        r = running(cluster, new)["replication"]
        seq = r["acked"].get(node(cluster, "n1").addr, 0)
        return r if seq >= r["last"]["seq"] > start["seq"] and not r["last"]["full"] \
            else None
    rep = wait_for(incremental, 60, "an incremental checkpoint taken by n1")
    assert rep["last"]["wire_bytes"] < start["bytes"], (rep["last"], start)
    assert list(rep["acked"]) == [node(cluster, "n1").addr], rep["acked"]

    print(f"\n  failover: {vm['boot']} on {new}; running {t_running - t_kill:.1f} s after "
          f"the kill of {old} (QMP running {vm['running_at'] - wall_kill:.1f} s after it); "
          f"counter at the kill {at_kill}, first on {new} {seen[0]}; page answered "
          f"{t_page - t_kill:.1f} s after the kill")
    print(f"  new backup n1: first frame of the new chain full, {start['bytes'] >> 10} KiB, "
          f"checkpoint {start['seq']}, taken {start['at'] - vm['running_at']:.1f} s after "
          f"the resume; then incrementals (checkpoint {rep['last']['seq']}: "
          f"{rep['last']['wire_bytes'] >> 10} KiB on the wire)")

    # the checkpoint is where this copy started, once: should its QEMU die, the restart
    # boots cold (resuming again would roll the guest back to the failover's instant)
    os.kill(vm["pid"], signal.SIGKILL)
    again = wait_for(lambda: (v := running(cluster, new)) and v["pid"] != vm["pid"] and v,
                     120, f"tiny restarted on {new}")
    assert again["boot"] == "cold", again

    def restarted() -> int | None:  # the serial log goes on across QEMU restarts
        c = counters(serial(cluster, new))
        return next((c[i] for i in range(1, len(c)) if c[i] < c[i - 1]), None)
    assert wait_for(restarted, 60, "the counter of the restarted guest") == 1
