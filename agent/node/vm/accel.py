"""Which accelerator VMs use on this node: KVM only when a Linux kernel boots with it.

/dev/kvm existing is not enough, and neither is firmware running: on this project's CI
host (nested KVM) SeaBIOS finished under KVM while every Linux guest then printed nothing
for minutes. So the probe boots a real kernel, the host's own (/boot/vmlinuz-RELEASE),
under KVM with a tiny initramfs whose /init prints MARKER on the serial port
(agent/node/vm/initramfs.py), and takes KVM only if the marker shows within PROBE_S.
Anything else (no /dev/kvm, not x86_64, no readable kernel, QEMU refusing, the deadline)
means TCG, with the reason kept in the verdict, which `vm status` shows.

The verdict is probed once and cached: in memory for the agent's run, and in the data
dir (vm-accel.json) keyed by the QEMU binary and the kernel release, so a restarted agent
does not pay the deadline again; delete that file to probe again.
`MYCELIUM_VM_ACCEL=tcg` (or `kvm`) in the agent's environment skips the probe; the tests
set it to tcg.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.node.vm.initramfs import probe_initramfs

ACCEL_ENV = "MYCELIUM_VM_ACCEL"
PROBE_S = 10.0  # a working KVM boots the kernel to /init in 1-2 s
KILL_WAIT_S = 5.0
MARKER = "mycelium-kvm-probe-ok"
KVM_DEV = Path("/dev/kvm")


@dataclass(frozen=True)
class Verdict:
    accel: str  # "kvm" or "tcg"
    reason: str


_answer: dict[str, Verdict] = {}  # by QEMU binary, for this agent run
_probing: dict[str, asyncio.Task[Verdict]] = {}  # VMs starting together share one probe


def host_kernel(boot: Path = Path("/boot")) -> Path | None:
    """The running kernel's image if readable, else the newest readable one."""
    own = boot / f"vmlinuz-{os.uname().release}"
    for k in [own, *sorted(boot.glob("vmlinuz-*"), reverse=True)]:
        if k.is_file() and os.access(k, os.R_OK):
            return k
    return None


def probe_argv(qemu: str, accel: str, kernel: Path, initrd: Path, log: Path) -> list[str]:
    return [qemu, "-accel", accel, "-nodefaults", "-no-user-config", "-display", "none",
            "-m", "96", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{log}"]


async def boot_probe(qemu: str, kernel: Path, accel: str = "kvm",
                     timeout: float = PROBE_S) -> tuple[bool, str]:
    """Boot `kernel` with the marker initramfs under `accel`: (marker seen, what happened)."""
    with tempfile.TemporaryDirectory(prefix="mycelium-accel-") as d:
        log, initrd = Path(d) / "serial.log", Path(d) / "probe.cpio"
        initrd.write_bytes(probe_initramfs(MARKER))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            proc = await asyncio.create_subprocess_exec(
                *probe_argv(qemu, accel, kernel, initrd, log),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            return False, f"cannot run {qemu}: {e.strerror}"
        try:
            while loop.time() - t0 < timeout:
                if log.is_file() and MARKER.encode() in log.read_bytes():
                    return True, f"a {accel.upper()} guest booted {kernel.name} to /init " \
                                 f"in {loop.time() - t0:.1f} s"
                if proc.returncode is not None:
                    err = (await proc.stderr.read()).decode(errors="replace") \
                        if proc.stderr else ""
                    last = err.strip().splitlines()[-1:] or ["no message"]
                    return False, f"the {accel.upper()} probe guest exited " \
                                  f"(status {proc.returncode}: {last[0][:160]})"
                await asyncio.sleep(0.1)
            return False, f"a {accel.upper()} guest booting {kernel.name} printed no " \
                          f"marker within {timeout:g} s"
        finally:
            if proc.returncode is None:
                proc.kill()
            try:  # a guest wedged in a KVM ioctl may take its time to die: do not wait
                await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
            except TimeoutError:
                pass


async def probe_kvm(qemu: str = "qemu-system-x86_64", timeout: float = PROBE_S, *,
                    kvm: Path = KVM_DEV, boot: Path = Path("/boot")) -> Verdict:
    if platform.machine() != "x86_64":
        return Verdict("tcg", f"KVM is probed on x86_64 hosts only (this is "
                              f"{platform.machine()})")
    if not os.access(kvm, os.R_OK | os.W_OK):
        return Verdict("tcg", f"no usable {kvm}")
    kernel = host_kernel(boot)
    if kernel is None:
        return Verdict("tcg", f"no readable kernel in {boot} to probe KVM with")
    ok, why = await boot_probe(qemu, kernel, "kvm", timeout)
    return Verdict("kvm" if ok else "tcg", f"KVM probe: {why}")


def _cache_key(qemu: str) -> str:
    path = shutil.which(qemu) or qemu
    try:
        st = os.stat(path)
        ident = f"{path}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        ident = path
    return f"{ident}|{os.uname().release}"


def _cached(cache: Path | None, key: str) -> Verdict | None:
    if cache is None:
        return None
    try:
        v = json.loads(cache.read_text()).get(key)
        if isinstance(v, dict) and v.get("accel") in ("kvm", "tcg"):
            return Verdict(v["accel"], f"{v.get('reason', '')} (cached in {cache.name})")
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _store(cache: Path | None, key: str, v: Verdict) -> None:
    if cache is None:
        return
    try:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({key: {"accel": v.accel, "reason": v.reason,
                                         "at": int(time.time())}}))
        tmp.replace(cache)
    except OSError:
        pass  # probed again next run


def forced() -> Verdict | None:
    v = os.environ.get(ACCEL_ENV, "")
    return Verdict(v, f"{ACCEL_ENV}={v}") if v in ("kvm", "tcg") else None


async def choose_verdict(qemu: str = "qemu-system-x86_64",
                         cache: Path | None = None) -> Verdict:
    """MYCELIUM_VM_ACCEL when set, else the verdict of this run, of the cache, or a probe
    (one at a time: VMs that start together wait for the same one)."""
    if (f := forced()) is not None:
        return f
    if qemu not in _answer:
        task = _probing.get(qemu)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = _probing[qemu] = asyncio.create_task(_decide(qemu, cache))
        _answer[qemu] = await asyncio.shield(task)
        _probing.pop(qemu, None)
    return _answer[qemu]


async def _decide(qemu: str, cache: Path | None) -> Verdict:
    key = _cache_key(qemu)
    v = _cached(cache, key)
    if v is None:
        v = await probe_kvm(qemu)
        _store(cache, key, v)
    return v


async def choose_accel(qemu: str = "qemu-system-x86_64", cache: Path | None = None) -> str:
    """"kvm" or "tcg" (what the supervisor passes to QEMU)."""
    return (await choose_verdict(qemu, cache)).accel


def accel_reason(qemu: str) -> str:
    """Why VMs of `qemu` run with the accelerator they run with ("" before any start)."""
    v = forced() or _answer.get(qemu)
    return v.reason if v else ""
