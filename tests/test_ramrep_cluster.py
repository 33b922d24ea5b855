"""Failover with memory kept: two real agents on loopback, the tiny VM (a serial counter,
TCG) replicated from its primary n2 to its backup n1 once a second over the node API's
mutual TLS. n2's agent is SIGKILLed (its QEMU dies with it); n1 resumes the VM from its
last good checkpoint, and the counter goes on from no older than one interval plus the
transfer before the kill, never from 1. In the default run (31-55 s: a TCG boot and a
failover); `-s` prints the figures.

The same with a disk (a qcow2 base image the guest writes its counter to): the backup
resumes memory and disk of the same checkpoint (tiny-disk N D with D = N - 1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.cli import main
from agent.lab.cluster import Cluster, free_port_pair, kill_node
from support.agents import GOSSIP, api, post_envelope, wait_for
from support.agents import node_vms as vms
from support.checkpoints import counters, disk_ticks
from support.tinyvm import disk_image, replicated_state

INTERVAL_MS = 1000
# n1 (the sclerotium) takes the endomycete, so the VM's primary is n2 and its backup n1,
# and killing n2 leaves the Raft leader alive to move the VM (as in test_vm_cluster).


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(2, sclerotia=1, extra_args=GOSSIP)


def vm_status(c: Cluster, capsys) -> str:
    capsys.readouterr()
    main(["vm", "status", "tiny", "--network", str(c.network), "--to", ",".join(c.addresses())])
    return capsys.readouterr().out


def test_backup_resumes_the_vm_with_its_memory(cluster: Cluster, capsys):
    env = sign_state(NetworkDir(cluster.network),
                     replicated_state(free_port_pair(), interval_ms=INTERVAL_MS))[1]
    assert post_envelope(cluster, env, cluster.nodes[0].addr)[1] == 200
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    wait_for(lambda: any(v["state"] == "running" for v in vms(cluster, "n2")["vms"]), 120,
             "tiny running on n2")
    held = wait_for(lambda: [b for b in vms(cluster, "n1")["backups"]
                             if (b["seq"] or 0) >= 4], 120, "four checkpoints on n1")[0]
    assert held["refused"] == 0, held

    def steady() -> dict | None:  # past the boot, the idle guest dirties little
        r = vms(cluster, "n2")["vms"][0]["replication"]
        last = r["last"]
        return r if last["dirtied_bytes"] and last["dirtied_bytes"] < last["image_bytes"] // 20 \
            else None
    rep = wait_for(steady, 60, "a checkpoint of an idle guest")
    assert rep["acked"] and not rep["last"]["full"], rep
    assert rep["last"]["wire_bytes"] < rep["last"]["dirtied_bytes"] + 64 * 1024, rep

    out = vm_status(cluster, capsys)
    assert "  replication: checkpoint" in out and "backup on n1: checkpoint" in out, out
    with capsys.disabled():
        print("\n  $ mycelium vm status tiny\n" + out)
    serial2 = Path(n2.data_dir) / "vms" / "tiny" / "serial.log"
    wait_for(lambda: len(counters(serial2)) >= 5, 60, "the counter at 5 on n2")
    before = vms(cluster, "n2")["vms"][0]["replication"]["last"]
    kill_node(n2)  # SIGKILL: the agent, and its QEMU with it (parent-death signal)
    t_kill, wall_kill = time.monotonic(), time.time()
    at_kill = counters(serial2)[-1]
    moved = wait_for(lambda: next((v for v in vms(cluster, "n1")["vms"]
                                   if v["state"] == "running"), None), 120, "tiny on n1")
    t_running = time.monotonic()
    assert moved["boot"].startswith("resumed from checkpoint"), moved
    serial1 = Path(n1.data_dir) / "vms" / "tiny" / "serial.log"
    first = wait_for(lambda: counters(serial1), 30, "the counter on n1")[0]
    t_counter = time.monotonic()
    assert "boot: resumed from checkpoint" in vm_status(cluster, capsys)
    lost = at_kill - first + 1  # counter ticks (seconds) the guest lives again
    print(f"\n  replication: checkpoint {rep['last']['seq']}: image "
          f"{rep['last']['image_bytes'] >> 20} MiB, dirtied "
          f"{(rep['last']['dirtied_bytes'] or 0) >> 10} KiB, on the wire "
          f"{rep['last']['wire_bytes'] >> 10} KiB")
    print(f"  failover: {moved['boot']}; running on n1 {t_running - t_kill:.1f} s after "
          f"the kill, counter seen after {t_counter - t_kill:.1f} s; counter at the kill "
          f"{at_kill}, first on n1 {first}: {lost} tick(s) of 1 s lived again")
    # n1's own event says when it called n2 dead: the issue's target is from there
    dead = [e["time"] for e in api(cluster, "/api/v1/events?n=200", n1.addr)
            if e["kind"] == "dead" and e["message"].startswith("n2:") and e["time"] >= wall_kill]
    if dead:
        print(f"  n1 called n2 dead {dead[0] - wall_kill:.1f} s after the kill; the VM ran on "
              f"n1 {t_running - t_kill - (dead[0] - wall_kill):.1f} s after that "
              "(target under 3 s)")
    print(f"  the last checkpoint shipped before the kill: {before['seq']}, started "
          f"{wall_kill - before['started']:.1f} s before it, its cycle (snapshot, diff, "
          f"send) {before['cycle_s']} s")
    assert first > 1, "the VM booted cold"
    # lost: at most one interval plus the checkpoint's own time and transfer (measured,
    # as the machine's load stretches it), in 1-s counter ticks, plus one tick of rounding
    allowed = INTERVAL_MS / 1000 + before["cycle_s"] + 1
    assert at_kill - (first - 1) <= allowed + 1, (first, at_kill, allowed)


def test_backup_resumes_the_vm_with_its_memory_and_disk(start_cluster, tmp_path, capsys):
    c = start_cluster(2, sclerotia=1, extra_args=GOSSIP)
    base = disk_image(tmp_path / "base.qcow2")
    yaml = replicated_state(free_port_pair(), interval_ms=INTERVAL_MS, image=base)
    env = sign_state(NetworkDir(c.network), yaml)[1]
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    n1, n2 = c.nodes[0], c.nodes[1]
    serial2 = Path(n2.data_dir) / "vms" / "tiny" / "serial.log"
    wait_for(lambda: len(disk_ticks(serial2)) >= 5, 120, "disk ticks on n2")
    wait_for(lambda: [b for b in vms(c, "n1")["backups"] if (b["seq"] or 0) >= 4], 120,
             "four checkpoints on n1")
    last = vms(c, "n2")["vms"][0]["replication"]["last"]
    assert "pause_s" in last and last["disk_bytes"] is not None, last
    kill_node(n2)
    t_kill = time.monotonic()
    at_kill = disk_ticks(serial2)[-1]
    moved = wait_for(lambda: next((v for v in vms(c, "n1")["vms"]
                                   if v["state"] == "running"), None), 120, "tiny on n1")
    assert moved["boot"].startswith("resumed from checkpoint"), moved
    serial1 = Path(n1.data_dir) / "vms" / "tiny" / "serial.log"
    ticks = wait_for(lambda: len(disk_ticks(serial1)) >= 2 and disk_ticks(serial1), 60,
                     "disk ticks on n1")
    print(f"\n  disk failover: {moved['boot']}, disk ticks on n1 {ticks[:3]} "
          f"({time.monotonic() - t_kill:.1f} s after the kill); last on n2 {at_kill}; "
          f"last checkpoint on n2: paused {last['pause_s']} s, disk {last['disk_bytes']} B")
    assert ticks[0][0] > 1, "the VM booted cold"
    assert all(d == n - 1 for n, d in ticks), ticks  # memory and disk of one instant
