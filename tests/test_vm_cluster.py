"""Two real agents on loopback run the tiny VM (tests/support/tinyvm.py) as an endophyte:
it starts on its primary, its port answers through the node's forward, `vm console`
shows its counter live, it cold-boots on the backup when the primary is SIGKILLed, and it
is stopped when deleted from network.yaml. One QEMU at a time, TCG. About 45 s on an idle
host: two boots of ~10 s each, and ~5 s for the survivor to call the primary dead (a
failed probe, then the suspicion floor)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.cli import main
from agent.lab.cluster import Cluster, free_port_pair, kill_node
from support.agents import GOSSIP, api, post_envelope, wait_for
from support.tinyvm import COUNTER, PAGE, page, tiny_vm

# The endomycete only weighs the placement: n1 (the sclerotium, Raft leader) takes it,
# so the VM's primary is n2 and its backup n1. Killing n2 leaves the leader alive to
# move the VM (a single sclerotium that dies takes the Primary with it); with a target of
# one sclerotium n2 is not promoted, so the Raft group keeps its quorum without it.
# RAM replication off: this test is the cold path (tests/test_ramrep_cluster.py the other).
YAML = """\
schema: 1
network: {{name: local}}
components: {{ram_replication: false}}
spores: {{primary: {{target_sclerotia: 1}}}}
services:
  endomycetes:
    web: {{image: localhost/web:1, replicas: 1}}
  endophytes:
{vms}"""
TINY = """\
    tiny:
      kernel: {kernel}
      initrd: {initrd}
      cmdline: {cmdline}
      cpus: 1
      memory_mb: 128
      backups: 1
      ports: [{{port: {port}, target: 80}}]
"""


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(2, sclerotia=1, extra_args=GOSSIP)


def push(c: Cluster, vms: str) -> None:
    net = NetworkDir(c.network)
    _, env = sign_state(net, YAML.format(vms=vms).encode())
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200


def vms_on(c: Cluster, name: str) -> dict[str, dict]:
    node = next(n for n in c.nodes if n.name == name)
    return {v["name"]: v for v in api(c, "/api/v1/vms", node.addr)["vms"]}


def running_on(c: Cluster, name: str) -> dict | None:
    v = vms_on(c, name).get("tiny")
    return v if v and v["state"] == "running" else None


def running_pid(pid: int) -> bool:
    """A process that is not ours may linger as a zombie until its reaper runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def counters(text: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{COUNTER} (\d+)\r?$", text, re.M)]


def logged(log: Path) -> list[int]:
    """The counters in a VM's serial log so far ([] before QEMU made the file)."""
    return counters(log.read_text(errors="replace")) if log.is_file() else []


def cli(c: Cluster, capsys, *args: str) -> str:
    capsys.readouterr()
    assert main([*args, "--network", str(c.network), "--to", ",".join(c.addresses())]) == 0
    return capsys.readouterr().out


def test_tiny_vm_placed_forwarded_moved_and_deleted(cluster: Cluster, capsys):
    vm = tiny_vm()
    port = free_port_pair()
    push(cluster, TINY.format(kernel=vm.kernel, initrd=vm.initrd, cmdline=vm.cmdline,
                              port=port))
    first = wait_for(lambda: running_on(cluster, "n2"), 120, "tiny running on n2")
    assert vms_on(cluster, "n1") == {}  # the backup runs nothing (no replication yet)
    serial = Path(cluster.nodes[1].data_dir) / "vms" / "tiny" / "serial.log"
    wait_for(lambda: logged(serial), 120, "the counter")
    assert wait_for(lambda: page(port), 60, "the page through the forward") == PAGE

    before = max(logged(serial))
    out = cli(cluster, capsys, "vm", "console", "tiny", "--for", "4")
    assert counters(out) and max(counters(out)) > before  # live, not only the log's tail
    out = cli(cluster, capsys, "vm", "list")
    assert "tiny" in out and "n2" in out and "running" in out and first["accel"] in out
    out = cli(cluster, capsys, "vm", "status", "tiny")
    assert "tiny on n2: running" in out and "boot: cold" in out
    assert f"accel {first['accel']}: " in out  # and why (the KVM probe's verdict)
    out = cli(cluster, capsys, "status", "--shares")
    assert "tiny:running" in out

    kill_node(cluster.nodes[1])  # SIGKILL: the node is gone, and its QEMU with it
    wait_for(lambda: not running_pid(first["pid"]), 10, "n2's QEMU gone")
    moved = wait_for(lambda: running_on(cluster, "n1"), 120, "tiny cold-booted on n1")
    assert moved["pid"] != first["pid"] and moved["restarts"] == 0
    serial1 = Path(cluster.nodes[0].data_dir) / "vms" / "tiny" / "serial.log"
    assert wait_for(lambda: logged(serial1), 120, "the counter on n1")[0] == 1  # cold boot

    push(cluster, "")  # deleted: stopped cleanly
    wait_for(lambda: vms_on(cluster, "n1") == {}, 60, "tiny stopped on n1")
    assert not running_pid(moved["pid"])
