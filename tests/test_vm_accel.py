"""The KVM probe (agent/node/vm/accel.py): KVM only when a kernel boots to the probe's
/init and its marker shows on serial within the deadline; anything else is TCG with the
reason, which `vm status` shows; the verdict is cached; MYCELIUM_VM_ACCEL overrides."""

from __future__ import annotations

import asyncio
import platform
import shutil
import subprocess
import sys

import pytest

from agent.node.vm import accel
from agent.node.vm.accel import MARKER, Verdict
from agent.node.vm.initramfs import marker_init, newc, probe_initramfs
from agent.node.vm.runtime import VmRuntime
from agent.node.vm.spec import VmSpec
from agent.node.vm.supervisor import VmSupervisor
from agent.views import VmRow, vm_status_lines

X86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86-64 ELF")

# A stand-in for qemu-system-x86_64: behaves as told by FAKE_QEMU (silent: boots and
# prints nothing, as nested KVM did; marker: prints the marker; exit: refuses at once)
FAKE = f"""#!{sys.executable}
import os, sys, time
args = sys.argv[1:]
log = args[args.index("-serial") + 1].removeprefix("file:")
mode = os.environ.get("FAKE_QEMU", "silent")
open(log, "w").close()
if mode == "exit":
    sys.exit("qemu-system-x86_64: failed to initialize kvm: Permission denied")
if mode == "marker":
    time.sleep(0.3)
    open(log, "a").write("\\n{MARKER}\\n")
time.sleep(60)
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake QEMU, a usable fake /dev/kvm, a /boot with a kernel; no forced accel."""
    qemu = tmp_path / "qemu"
    qemu.write_text(FAKE)
    qemu.chmod(0o755)
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-test-amd64").write_bytes(b"kernel")
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    monkeypatch.setattr(accel, "_answer", {})
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return qemu, kvm, boot


def probe(host, timeout=2.0) -> Verdict:
    qemu, kvm, boot = host
    return asyncio.run(accel.probe_kvm(str(qemu), timeout, kvm=kvm, boot=boot))


def test_kvm_only_when_the_marker_shows(host, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU", "marker")
    v = probe(host)
    assert v.accel == "kvm" and "booted vmlinuz-6.1.0-test-amd64 to /init" in v.reason


def test_a_guest_that_prints_no_marker_falls_back_to_tcg(host, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU", "silent")  # firmware may run; the kernel never speaks
    v = probe(host, timeout=1.0)
    assert v == Verdict("tcg", "KVM probe: a KVM guest booting vmlinuz-6.1.0-test-amd64 "
                               "printed no marker within 1 s")


def test_every_other_failure_is_tcg_with_its_reason(host, monkeypatch, tmp_path):
    qemu, kvm, boot = host
    monkeypatch.setenv("FAKE_QEMU", "exit")
    v = probe(host)
    assert v.accel == "tcg" and "exited (status 1: qemu-system-x86_64: failed to " \
        "initialize kvm: Permission denied)" in v.reason
    assert probe((qemu, tmp_path / "no-kvm", boot)) == Verdict(
        "tcg", f"no usable {tmp_path / 'no-kvm'}")
    assert probe((qemu, kvm, tmp_path)).reason == \
        f"no readable kernel in {tmp_path} to probe KVM with"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert probe(host).reason == "KVM is probed on x86_64 hosts only (this is aarch64)"


def test_the_verdict_is_cached_per_run_and_on_disk(host, monkeypatch, tmp_path):
    qemu = str(host[0])
    probes = []

    async def fake_probe(q, *_a, **_k):
        probes.append(q)
        await asyncio.sleep(0.05)  # as a probe does: others may start meanwhile
        return Verdict("tcg", "KVM probe: no marker")

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    cache = tmp_path / "data" / "vm-accel.json"
    cache.parent.mkdir()
    assert asyncio.run(accel.choose_accel(qemu, cache)) == "tcg"
    assert asyncio.run(accel.choose_accel(qemu, cache)) == "tcg"
    assert probes == [qemu] and accel.accel_reason(qemu) == "KVM probe: no marker"
    monkeypatch.setattr(accel, "_answer", {})  # the agent restarted: the file answers
    v = asyncio.run(accel.choose_verdict(qemu, cache))
    assert probes == [qemu] and v == Verdict("tcg", "KVM probe: no marker (cached in "
                                                    "vm-accel.json)")
    monkeypatch.setattr(accel, "_answer", {})  # VMs starting together: one probe

    async def together():
        return await asyncio.gather(*(accel.choose_verdict(qemu) for _ in range(3)))

    assert len(set(asyncio.run(together()))) == 1 and probes == [qemu, qemu]
    cache.write_text("{not json")  # a torn cache is probed again, not trusted
    monkeypatch.setattr(accel, "_answer", {})
    asyncio.run(accel.choose_verdict(qemu, cache))
    assert probes == [qemu, qemu, qemu]
    monkeypatch.setenv(accel.ACCEL_ENV, "kvm")  # the environment still wins
    assert asyncio.run(accel.choose_verdict(qemu, cache)) == Verdict(
        "kvm", "MYCELIUM_VM_ACCEL=kvm")


def test_vm_status_says_why_that_accelerator(tmp_path, monkeypatch):
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    why = "KVM probe: a KVM guest booting vmlinuz-6.1 printed no marker within 10 s"
    monkeypatch.setattr(accel, "_answer", {"qemu-system-x86_64": Verdict("tcg", why)})
    rt = VmRuntime(tmp_path)
    assert rt.accel.keywords == {"cache": tmp_path / "vm-accel.json"}  # kept per data dir
    sup = VmSupervisor(VmSpec("db"), rt.paths("db"), rt.cache)
    sup.accel = "tcg"  # as after a start
    rt.vms = {"db": sup}
    [status] = rt.status()
    assert status["accel"] == "tcg" and status["accel_reason"] == why
    lines = vm_status_lines([VmRow.from_api("n1", status)], "db")
    assert f"  accel tcg: {why}" in lines


@X86
def test_the_probe_init_is_a_static_elf_that_prints_the_marker(tmp_path):
    init = tmp_path / "init"
    init.write_bytes(marker_init(b"hello from init\n"))
    init.chmod(0o755)
    out = subprocess.run([str(init)], capture_output=True, timeout=10)
    assert (out.returncode, out.stdout) == (0, b"hello from init\n")
    data = probe_initramfs(MARKER)
    assert b"dev/console\0" in data and b"%08X" % (0o020600) in data
    assert newc({"a": (b"x", 0o644)}).endswith(b"TRAILER!!!\0\0\0\0")


@X86
def test_the_probe_boots_the_host_kernel_to_the_marker_under_tcg():
    """The real probe path, with TCG instead of KVM (which hangs on the CI host): the
    host's kernel, the marker initramfs, the serial log, QEMU exiting by itself."""
    kernel = accel.host_kernel()
    if kernel is None or not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs a readable /boot/vmlinuz-* and qemu-system-x86")
    ok, why = asyncio.run(accel.boot_probe("qemu-system-x86_64", kernel, "tcg", 180.0))
    assert ok, why
    assert why.startswith(f"a TCG guest booted {kernel.name} to /init in ")

