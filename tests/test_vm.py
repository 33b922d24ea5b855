"""Endophyte VMs on one node: the supervisor's rules as tables, then real QEMU runs of the
tiny VM (tests/support/tinyvm.py) under TCG, one at a time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from agent.desired.model import Endophyte, Port
from agent.node.vm.console import log_tail
from agent.node.vm.policy import Exits, Policy
from agent.node.vm.spec import Forward, VmPaths, VmSpec, qemu_argv
from agent.node.vm.supervisor import VmSupervisor
from support.checkpoints import counters, wait_until
from support.tinyvm import newc, tiny_vm

FAST = Policy(quick_s=10.0, quick_exits=3, stable_s=60.0, backoff_min_s=0.3,
              backoff_max_s=1.0)


# --- pure rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("runs, restarts, delays", [
    ([0.5, 0.5, 0.5], [True, True, False], [1.0, 2.0, None]),  # at once three times: failed
    ([0.5, 30.0, 0.5, 0.5], [True, True, True, True], [1.0, 2.0, 4.0, 8.0]),  # not in a row
    ([120.0, 120.0], [True, True], [1.0, 1.0]),  # stable runs reset the backoff
    ([30.0] * 8, [True] * 8, [1, 2, 4, 8, 16, 32, 60, 60]),  # doubling, capped
])
def test_restart_policy(runs, restarts, delays):
    exits, got_restart, got_delay = Exits(), [], []
    for ran in runs:
        exits, v = Policy().after_exit(exits, ran, "exit status 1: boom")
        got_restart.append(v.restart)
        got_delay.append(v.delay if v.restart else None)
        if not v.restart:
            assert "exited at once 3 times" in v.reason and "boom" in v.reason
    assert got_restart == restarts and got_delay == delays


def test_argv_direct_boot_with_forwards(tmp_path):
    spec = VmSpec.of(Endophyte("db", kernel="/k", initrd="/i", cmdline="console=ttyS0",
                               cpus=2, memory_mb=256, ports=(Port(8080, "tcp", 80),)))
    assert spec.forwards == (Forward(8080, 80, "tcp"),)
    argv = qemu_argv(spec, VmPaths(tmp_path / "a,b"), "tcg", None)
    joined = " ".join(argv)
    assert "-accel tcg,thread=multi" in joined and "-smp 2 -m 256" in joined
    assert "-kernel /k -initrd /i -append console=ttyS0" in joined
    assert "hostfwd=tcp::8080-:80" in joined and "-drive" not in argv
    assert f"unix:{tmp_path}/a,,b/qmp.sock" in joined  # commas doubled in option values
    disk = qemu_argv(spec, VmPaths(tmp_path), "kvm", tmp_path / "o.qcow2")
    assert ["-accel", "kvm"] == disk[3:5] and f"file={tmp_path}/o.qcow2" in " ".join(disk)


def test_systemd_scope_keeps_the_command():
    from agent.node.vm.spec import in_scope

    argv = in_scope(["qemu-system-x86_64", "-m", "64"], "db")
    assert argv[:2] == ["systemd-run", "--scope"] and "--unit=mycelium-vm-db" in argv
    assert argv[-3:] == ["qemu-system-x86_64", "-m", "64"]


def test_newc_archive_layout():
    data = newc({"bin/x": (b"abc", 0o755)})
    assert data.startswith(b"070701") and b"bin\0" in data and b"TRAILER!!!\0" in data
    assert len(data) % 4 == 0


# --- real QEMU ------------------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def test_tiny_vm_runs_and_stops_cleanly(tmp_path):
    vm = tiny_vm()
    spec = VmSpec("tiny", 1, 128, kernel=str(vm.kernel), initrd=str(vm.initrd),
                  cmdline=vm.cmdline)
    sup = VmSupervisor(spec, VmPaths(tmp_path / "tiny"), tmp_path / "cache", policy=FAST,
                       stop_deadline=60.0)

    async def go():
        sup.start()
        log = sup.paths.serial_log
        tail = lambda: f"{sup.status()}; serial: {log_tail(log, 300)!r}"  # noqa: E731
        await wait_until(lambda: len(counters(log)) >= 3, 240, "the counter on serial", tail)
        st = sup.status()
        assert st["state"] == "running" and st["qmp"] == "running", st
        assert st["accel"] in ("kvm", "tcg") and st["uptime_s"] > 0 and st["pid"]
        seen = counters(log)
        assert seen == list(range(1, len(seen) + 1))  # increasing, none lost
        t0 = time.monotonic()
        await sup.stop()
        return time.monotonic() - t0

    took = run(go())
    assert sup.state == "stopped" and sup.pid is None
    assert took < 60.0, "the guest powered off on ACPI powerdown, not by the kill"
    assert sup.exits.count == 0


def test_qemu_killed_while_placed_is_restarted_and_a_deaf_guest_killed(tmp_path):
    """A guest that ignores ACPI (zeros for a kernel: QEMU runs, the guest does nothing) is
    killed at the stop deadline; a QEMU killed under it is restarted after the backoff."""
    junk = tmp_path / "kernel"
    junk.write_bytes(b"\0" * 8192)
    policy = Policy(quick_s=1.0, backoff_min_s=0.3)

    async def tcg(_: str) -> str:
        return "tcg"

    sup = VmSupervisor(VmSpec("deaf", 1, 64, kernel=str(junk)), VmPaths(tmp_path / "deaf"),
                       tmp_path / "cache", policy=policy, stop_deadline=2.0, accel=tcg)
    reasons: list[str] = []
    sup._on_change = lambda: reasons.append(f"{sup.state}: {sup.reason}")

    async def go():
        sup.start()
        await wait_until(lambda: sup.state == "running", 60, "QMP running", sup.status)
        first = sup.pid
        await asyncio.sleep(policy.quick_s + 0.5)  # not an exit "at once"
        os.kill(first, signal.SIGKILL)  # QEMU dies while the VM is still placed here
        await wait_until(lambda: sup.state == "running" and sup.pid not in (None, first), 60,
                         "the restart", sup.status)
        assert sup.status()["restarts"] == 1
        await sup.stop()

    run(go())
    assert sup.state == "stopped" and sup.pid is None
    assert any(r.startswith("restarting: QEMU exited (exit status -9") for r in reasons)
    assert "stopping: no power-off within 2 s: killing" in reasons


def test_verified_base_gets_a_qcow2_overlay_per_vm(tmp_path):
    from agent.node.vm.images import prepare_disk

    base = tmp_path / "base.img"
    base.write_bytes(b"\1" * 65536)
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    paths = VmPaths(tmp_path / "vm")
    disk = run(prepare_disk(VmSpec("vm", image=str(base), image_sha256=sha), paths,
                            tmp_path / "cache"))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["backing-filename"] == str(base.resolve())
    assert info["backing-filename-format"] == "raw"
    again = run(prepare_disk(VmSpec("vm", image=str(base)), paths, tmp_path / "cache"))  # kept
    assert again == disk and not (paths.dir / "overlay.qcow2.old").exists()
    other = tmp_path / "other.img"
    other.write_bytes(b"\2" * 65536)
    run(prepare_disk(VmSpec("vm", image=str(other)), paths, tmp_path / "cache"))
    assert (paths.dir / "overlay.qcow2.old").exists()  # a new base: new overlay, old kept


def test_image_url_fetched_once_and_a_wrong_one_never_kept(tmp_path):
    import http.server
    import threading

    from agent.errors import VmError
    from agent.node.vm.images import base_image

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "db.img").write_bytes(b"disk" * 1000)
    sha = hashlib.sha256(b"disk" * 1000).hexdigest()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/db.img"
    cache = tmp_path / "cache"
    try:
        with pytest.raises(VmError, match="downloaded sha256 is"):
            base_image(VmSpec("db", image=url, image_sha256="0" * 64), cache)
        assert list(cache.iterdir()) == []
        got = base_image(VmSpec("db", image=url, image_sha256=sha), cache)
        assert got == cache / sha and got.read_bytes() == b"disk" * 1000
        (tmp_path / "www" / "db.img").unlink()  # gone from the server: the cache serves
        assert base_image(VmSpec("other", image=url, image_sha256=sha), cache) == got
    finally:
        srv.shutdown()


def test_bad_image_hash_never_starts(tmp_path):
    image = tmp_path / "base.img"
    image.write_bytes(b"\0" * 4096)
    wrong = hashlib.sha256(b"something else").hexdigest()
    spec = VmSpec("bad", image=str(image), image_sha256=wrong)
    sup = VmSupervisor(spec, VmPaths(tmp_path / "bad"), tmp_path / "cache", policy=FAST)

    async def go():
        sup.start()
        await wait_until(lambda: sup.done, 30, "the supervisor to give up")

    run(go())
    assert sup.state == "failed" and "sha256 is" in sup.reason and wrong in sup.reason
    assert not sup.paths.stderr.exists() and not sup.paths.overlay.exists()  # no QEMU ran


def test_qemu_exiting_at_once_is_backed_off_then_failed(tmp_path):
    junk = tmp_path / "kernel"
    junk.write_bytes(b"\0" * 8192)
    spec = VmSpec("junk", 256, 64, kernel=str(junk))  # real QEMU: "max CPUs ... is 255"
    starts: list[float] = []

    async def tcg(_: str) -> str:
        starts.append(time.monotonic())
        return "tcg"

    sup = VmSupervisor(spec, VmPaths(tmp_path / "junk"), tmp_path / "cache", policy=FAST,
                       accel=tcg)

    async def go():
        sup.start()
        await wait_until(lambda: sup.done, 60, "the supervisor to give up")

    run(go())
    assert sup.state == "failed", sup.status()
    assert "exited at once 3 times" in sup.reason and "exit status 1" in sup.reason
    assert "max CPUs" in sup.reason  # QEMU's own words say why
    assert len(starts) == 3  # not hot-looped: three launches, then it stopped trying
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # backed off, doubling


def test_plan_loads_the_vm_runtime_where_a_vm_is_primary_or_a_replicated_backup():
    from dataclasses import replace

    from agent.desired.model import Components, DesiredState, NodeShare
    from agent.desired.plan import plan_from_dict, plan_node
    from agent.node.vm.spec import wanted_vms

    state = DesiredState("n", endophytes=(Endophyte("db", kernel="/k", memory_mb=64),))
    primary = NodeShare("a", endophytes_primary=("db",), role="rhizomorph")
    backup = NodeShare("b", endophytes_backup=("db",), role="rhizomorph")
    p = plan_node(state, 1, "a", primary)
    assert "vm" in p.components and p.vm_runtime is not None and not p.waiting
    assert plan_from_dict(p.to_dict()) == p  # the apply subprocess gets the same plan
    b = plan_node(state, 1, "b", backup)  # QEMU ready for a failover that resumes
    assert "vm" in b.components and b.vm_runtime is not None and not b.waiting
    cold = replace(state, components=Components(ram_replication=False))
    b = plan_node(cold, 1, "b", backup)  # nothing to resume: nothing to install
    assert "vm" not in b.components and b.vm_runtime is None and not b.waiting
    assert set(wanted_vms(state, primary)) == {"db"} and wanted_vms(state, backup) == {}
    off = replace(state, components=Components(vm_runtime=False))
    assert wanted_vms(off, primary) == {}
    assert any("components.vm_runtime is false" in w
               for w in plan_node(off, 1, "a", primary).waiting)


def test_runtime_replaces_a_changed_vm_and_stops_a_removed_one(tmp_path):
    """Specs that fail before QEMU (a wrong hash) keep this fast: the runtime's bookkeeping
    is what is tested; real QEMU runs are the tests above."""
    from agent.node.vm.runtime import VmRuntime

    image = tmp_path / "base.img"
    image.write_bytes(b"\0" * 512)
    bad = VmSpec("a", image=str(image), image_sha256="0" * 64)
    worse = VmSpec("a", image=str(image), image_sha256="1" * 64)
    changes: list[str] = []

    async def go():
        async with VmRuntime(tmp_path / "data", policy=FAST,
                             on_change=lambda: changes.append("x")) as rt:
            rt.apply({"a": bad})
            first = rt.vms["a"]
            rt.apply({"a": bad})  # idempotent: the same supervisor
            assert rt.vms["a"] is first
            await wait_until(lambda: first.done, 30, "a to fail")
            assert rt.status()[0]["state"] == "failed" and "0" * 64 in first.reason
            rt.apply({"a": worse})  # a new spec: a new supervisor, after the old stopped
            assert rt.vms["a"] is not first
            await wait_until(lambda: rt.vms["a"].done, 30, "the new spec to fail")
            assert "1" * 64 in rt.status()[0]["reason"]
            rt.apply({})
            await wait_until(lambda: rt.status() == [], 30, "a to leave")
            assert rt.summary() == {}
        rt.apply({"a": bad})  # after exit (agent stopping) nothing starts
        assert rt.vms == {}
        many = VmRuntime(tmp_path / "data")
        many.vms = {f"v{i:02d}": VmSupervisor(VmSpec(f"v{i:02d}"), many.paths("x"), many.cache)
                    for i in range(40)}  # never started: "stopped"
        summary = many.summary()
        assert len(summary) == 16 and summary["..."] == "25 more" and summary["v00"] == "stopped"

    run(go())
    assert changes  # every state change is announced (the agent refreshes gossip)


def test_accel_from_the_environment_skips_the_probe(monkeypatch):
    from agent.node.vm import accel

    async def no_probe(*_a, **_k):
        raise AssertionError("probed although MYCELIUM_VM_ACCEL was set")

    monkeypatch.setattr(accel, "probe_kvm", no_probe)
    for forced in ("tcg", "kvm"):
        monkeypatch.setenv(accel.ACCEL_ENV, forced)
        assert run(accel.choose_accel("qemu-x")) == forced
