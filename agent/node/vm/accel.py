"""Which accelerator VMs use on this node: KVM only when a probe guest runs with it.

/dev/kvm existing is not enough: on a nested host it can hang guests or abort QEMU. The
probe boots QEMU's own BIOS (SeaBIOS) under KVM with no disk and waits for it to say
`No bootable device.` on its debug port: guest code actually ran, to the end of the BIOS.
It takes well under a second where KVM works; PROBE_S without that line means TCG. The
answer is kept for the agent's lifetime (one probe per agent run, at the first VM start).

The probe can pass where Linux guests still hang: on this project's CI host (nested KVM)
SeaBIOS finished under KVM and the tiny VM's kernel then printed nothing for 4 minutes.
`MYCELIUM_VM_ACCEL=tcg` (or `kvm`) in the agent's environment skips the probe; the tests
set it to tcg.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

ACCEL_ENV = "MYCELIUM_VM_ACCEL"
PROBE_S = 5.0
KILL_WAIT_S = 5.0
BIOS_DONE = b"No bootable device."
_answer: dict[str, str] = {}


def probe_argv(qemu: str, log: Path) -> list[str]:
    return [qemu, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
            "-m", "16", "-chardev", f"file,id=d,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=d"]


async def probe_kvm(qemu: str = "qemu-system-x86_64", timeout: float = PROBE_S) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="mycelium-kvm-") as d:
        log = Path(d) / "bios.log"
        try:
            proc = await asyncio.create_subprocess_exec(
                *probe_argv(qemu, log), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return False
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline and proc.returncode is None:
                if log.is_file() and BIOS_DONE in log.read_bytes():
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            if proc.returncode is None:
                proc.kill()
            try:  # a guest wedged in a KVM ioctl may take its time to die: do not wait
                await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
            except TimeoutError:
                pass


async def choose_accel(qemu: str = "qemu-system-x86_64") -> str:
    """"kvm" or "tcg": MYCELIUM_VM_ACCEL when set, else probed once per agent run."""
    forced = os.environ.get(ACCEL_ENV, "")
    if forced in ("kvm", "tcg"):
        return forced
    if qemu not in _answer:
        _answer[qemu] = "kvm" if await probe_kvm(qemu) else "tcg"
    return _answer[qemu]
