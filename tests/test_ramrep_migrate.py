"""Planned migration with memory kept (`mycelium vm migrate`): three real agents on
loopback, the tiny VM (a serial counter, TCG) replicated from its primary n2 to its
backup n3. A handoff the leader never commits is thawed: the guest runs on where it
was. `vm migrate tiny --to n3` pauses the guest for a final checkpoint, the leader
commits the swap, n3 resumes it from that checkpoint and n2 quits its paused QEMU: the
counter goes on where it paused, never from 1, and n2 becomes the backup. Then `--to n1`,
a node that is not a backup, makes n1 one first. In the default run; `-s` prints the
pauses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.cli import main
from agent.lab.cluster import Cluster
from support.agents import GOSSIP, call, post_envelope, wait_for
from support.agents import node_vms as vms
from support.checkpoints import counters
from support.tinyvm import replicated_state


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(3, sclerotia=1, extra_args=GOSSIP)


def running(c: Cluster, name: str) -> dict | None:
    return next((v for v in vms(c, name)["vms"] if v["state"] == "running"), None)


def serial(c: Cluster, name: str) -> Path:
    return Path(next(n for n in c.nodes if n.name == name).data_dir) / "vms/tiny/serial.log"


def migrate(c: Cluster, to: str, capsys) -> str:
    capsys.readouterr()
    assert main(["vm", "migrate", "tiny", "--to", to, "--network", str(c.network),
                 "--nodes", ",".join(c.addresses())]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n  $ mycelium vm migrate tiny --to {to}\n" + out)
    return out


def moved(c: Cluster, old: str, new: str, capsys) -> None:
    """`vm migrate tiny --to new` from `old`: the guest goes on where it paused."""
    before = counters(serial(c, old))
    out = migrate(c, new, capsys)
    assert f"tiny runs on {new} (resumed from checkpoint" in out and "paused " in out, out
    v = running(c, new)
    assert v and v["boot"].startswith("resumed from checkpoint"), v
    # the old QEMU quits once the new one runs: its log ends where the guest paused
    wait_for(lambda: not vms(c, old)["vms"], 60, f"tiny gone from {old}")
    last = counters(serial(c, old))[-1]
    first = wait_for(lambda: counters(serial(c, new)), 30, f"the counter on {new}")[0]
    with capsys.disabled():
        print(f"  counter: {len(before)} lines on {old} when asked, last {last}; first on "
              f"{new} {first}")
    # nothing lived twice or was lost: at most the line the pause cut is missing
    assert last < first <= last + 2, (last, first)
    # the old primary is the backup now, and takes the new primary's checkpoints (not
    # just the chain it kept on disk from an earlier turn as a backup)
    wait_for(lambda: [b for b in vms(c, old)["backups"] if b["vm"] == "tiny"
                      and b["received_bytes"] > 0], 120, f"{old} taking checkpoints")


def test_migrate_keeps_the_memory(cluster: Cluster, capsys):
    # n1 (the sclerotium) takes the endomycete: the VM's primary is n2, its backup n3
    env = sign_state(NetworkDir(cluster.network), replicated_state(None))[1]
    assert post_envelope(cluster, env, cluster.nodes[0].addr)[1] == 200
    wait_for(lambda: running(cluster, "n2"), 120, "tiny running on n2")
    wait_for(lambda: [b for b in vms(cluster, "n3")["backups"] if (b["seq"] or 0) >= 3],
             120, "three checkpoints on n3")
    wait_for(lambda: len(counters(serial(cluster, "n2"))) >= 3, 60, "the counter on n2")

    capsys.readouterr()  # refused in one line, nothing moved
    assert main(["vm", "migrate", "tiny", "--to", "n2", "--network", str(cluster.network),
                 "--nodes", ",".join(cluster.addresses())]) == 1
    assert "VM tiny already runs on n2" in capsys.readouterr().err

    # a handoff that is not followed by a commit: the primary's guest runs on (`thaw`)
    net, n2 = NetworkDir(cluster.network), cluster.nodes[1].addr
    _, status, body = call(net, [n2], "POST", "/api/v1/vms/tiny/handoff", b'{"to": "n3"}')
    assert status == 200, body
    paused = running(cluster, "n2")
    assert paused and paused["reason"] == "paused for its move to n3", paused
    at = counters(serial(cluster, "n2"))[-1]
    seq = body["seq"]
    assert call(net, [n2], "POST", "/api/v1/vms/tiny/thaw", b"{}")[1] == 200
    wait_for(lambda: counters(serial(cluster, "n2"))[-1] >= at + 2, 30, "the guest again")
    assert counters(serial(cluster, "n2"))[-1] > at and not running(cluster, "n3")
    wait_for(lambda: [b for b in vms(cluster, "n3")["backups"] if (b["seq"] or 0) > seq],
             60, "checkpoints after the thaw")

    moved(cluster, "n2", "n3", capsys)
    # n1 is neither primary nor backup: it is made a backup first, n2 gives its seat up
    wait_for(lambda: len(counters(serial(cluster, "n3"))) >= 3, 60, "the counter on n3")
    moved(cluster, "n3", "n1", capsys)

    capsys.readouterr()
    main(["status", "--shares", "--network", str(cluster.network), "--to",
          ",".join(cluster.addresses())])
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n  $ mycelium status --shares\n" + out)
    assert "tiny:running (buf " in out, out
