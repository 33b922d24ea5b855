"""Endophyte figures (printed): VM start time, from the placement committed to the tiny
VM's serial counter seen, under TCG (the tests force it: MYCELIUM_VM_ACCEL=tcg, so no
probe is in that figure); the agent's memory while it supervises the VMs; and how long
this host's KVM probe takes to give its verdict. One agent on loopback; BENCH_VMS tiny
VMs (default 1; BENCH_VMS=2 for the issue's two-VM figure).
Run: BENCH_VMS=2 .venv/bin/python -m pytest -m bench -s tests/bench/bench_vm.py"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.node.vm.accel import probe_kvm
from support.agents import GOSSIP, api, post_envelope, wait_for
from support.tinyvm import COUNTER, tiny_vm

pytestmark = pytest.mark.bench

VMS = int(os.environ.get("BENCH_VMS", "1"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_bench_vm_start_and_agent_memory(start_cluster):
    c = start_cluster(1, sclerotia=1, extra_args=GOSSIP)
    node = c.nodes[0]
    vm = tiny_vm()
    before = rss_mib(node.pid)
    vms = "".join(f"    t{i}: {{kernel: {vm.kernel}, initrd: {vm.initrd}, cmdline: "
                  f"'{vm.cmdline}', memory_mb: 128, backups: 0}}\n" for i in range(VMS))
    yaml = f"schema: 1\nnetwork: {{name: local}}\nservices:\n  endophytes:\n{vms}"
    _, env = sign_state(NetworkDir(c.network), yaml.encode())
    assert post_envelope(c, env, node.addr)[1] == 200
    wait_for(lambda: api(c, "/api/v1/share", node.addr)["placement_version"], 30,
             "the placement committed")
    t0 = time.monotonic()
    logs = [Path(node.data_dir) / "vms" / f"t{i}" / "serial.log" for i in range(VMS)]
    seen = {}
    while len(seen) < VMS and time.monotonic() - t0 < 300:
        for log in logs:
            if log not in seen and log.is_file() and COUNTER in log.read_text(errors="replace"):
                seen[log] = time.monotonic() - t0
        time.sleep(0.1)
    assert len(seen) == VMS, "not every VM printed its counter within 300 s"
    accel = {v["accel"] for v in api(c, "/api/v1/vms", node.addr)["vms"]}
    after = rss_mib(node.pid)
    print(f"\n{VMS} tiny VM(s), accel {','.join(sorted(accel))}, load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"placement committed -> counter on serial: "
          f"{', '.join(f'{s:.1f}' for s in sorted(seen.values()))} s")
    print(f"agent RSS: {before:.1f} MiB before, {after:.1f} MiB supervising {VMS} VM(s)")


def test_bench_kvm_probe():
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86")
    t0 = time.monotonic()
    v = asyncio.run(probe_kvm())
    print(f"\nKVM probe: {v.accel} after {time.monotonic() - t0:.1f} s ({v.reason}), load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
