"""QEMU guests for boot tests: start, watch the serial console, reach SSH, always clean up.

Boot tests are judged by what the guest prints on its serial console, so the console goes
to a file that `Guest.wait_for` tails, and a test that fails still leaves the log behind.
KVM is probed rather than trusted: on nested hosts `/dev/kvm` exists but guests stop with
an emulation failure or hang, and TCG is the only thing that boots (see PLATFORM.md).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn

from image.errors import BuildError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TCG = ["-accel", "tcg,thread=multi"]
KVM = ["-accel", "kvm"]  # not -cpu host: it aborts on nested hosts even where KVM works
KVM_PROBE_TIMEOUT = 10.0  # OVMF reaches BdsDxe in ~1 s on KVM and ~4 s under TCG here
# CSI/escape sequences (OVMF and systemd colour their output) and carriage returns.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")
_ANSI_TAIL = re.compile(r"\x1b(\[[0-?]*[ -/]*)?$")


@dataclass(frozen=True)
class Board:
    """What differs between emulated machines: binary, machine flags, disk and NIC models."""

    binary: str
    machine: tuple[str, ...]
    drive_if: str
    nic: str
    serial: tuple[str, ...]  # chardevs before the one that is logged
    uefi: bool
    acpi: bool  # whether system_powerdown reaches the guest
    fixed_memory: str | None = None  # raspi models accept only their real RAM size
    fixed_smp: bool = False


BOARDS = {
    "x86_64": Board("qemu-system-x86_64", ("-M", "q35"), "virtio", "virtio-net-pci", (),
                    uefi=True, acpi=True),
    # The first PL011 belongs to Bluetooth in the Pi device trees: the console is ttyS1.
    "raspi3b": Board("qemu-system-aarch64", ("-M", "raspi3b"), "sd", "usb-net",
                     ("-serial", "null"), uefi=False, acpi=False, fixed_memory="1G",
                     fixed_smp=True),
}


@dataclass(frozen=True)
class DirectBoot:
    """Kernel, device tree and command line handed to QEMU, as the Pi firmware would."""

    kernel: Path
    dtb: Path | None = None
    initrd: Path | None = None
    append: str = "console=ttyS1,115200 root=/dev/mmcblk0p2 rootwait"


@dataclass(frozen=True)
class SocketNet:
    """One side of a private guest-to-guest link over a loopback TCP socket.

    One guest listens, the other connects; QEMU carries Ethernet frames between them.
    """

    mode: Literal["listen", "connect"]
    port: int

    def netdev(self, netid: str) -> str:
        return f"socket,id={netid},{self.mode}=127.0.0.1:{self.port}"


def free_port() -> int:
    """A loopback TCP port free right now (a race is possible but harmless in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mac(name: str, index: int) -> str:
    """Stable per guest and NIC: QEMU's default MAC is the same for every guest."""
    h = hashlib.sha256(f"{name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def _opt(path: Path) -> str:
    """QEMU option values treat a comma as a separator unless doubled."""
    return str(path).replace(",", ",,")


def _probe_cache() -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id")
    key = boot_id.read_text().strip() if boot_id.exists() else "unknown"
    return Path(tempfile.gettempdir()) / f"mycelium-qemu-accel-{key}"


def _kvm_boots() -> bool:
    """Boot OVMF without a disk under KVM and see whether it reaches its boot manager."""
    with tempfile.TemporaryDirectory(prefix="mycelium-kvm-probe-") as tmp:
        with Guest(None, Path(tmp), name="kvm-probe", memory_mb=256, ssh=False,
                   accel_args=KVM) as g:
            deadline = time.monotonic() + KVM_PROBE_TIMEOUT
            while time.monotonic() < deadline:
                if "BdsDxe" in g.console():
                    return True
                if not g.running or "KVM internal error" in g.qemu_messages():
                    return False
                status = g.qmp("query-status")
                if isinstance(status, dict) and status.get("status") != "running":
                    return False  # internal-error, guest-panicked, shutdown...
                time.sleep(0.2)
    return False


@functools.cache
def accel() -> list[str]:
    """QEMU acceleration flags for x86 guests: KVM only where a guest really boots on it.

    MYCELIUM_QEMU_ACCEL=tcg|kvm skips the probe. The result is cached per process and, in
    the temp dir, per host boot, because a failing probe costs up to 10 s.
    """
    forced = os.environ.get("MYCELIUM_QEMU_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("tcg", "kvm"):
            raise BuildError(f"MYCELIUM_QEMU_ACCEL={forced!r}: use tcg or kvm")
        return list(TCG if forced == "tcg" else KVM)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return list(TCG)
    cache = _probe_cache()
    try:
        verdict = cache.read_text().strip()
    except OSError:
        verdict = ""
    if verdict not in ("tcg", "kvm"):
        verdict = "kvm" if _kvm_boots() else "tcg"
        try:
            cache.write_text(verdict + "\n")
        except OSError:
            pass
    return list(KVM if verdict == "kvm" else TCG)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill QEMU's whole session; also runs from a finalizer if a Guest is leaked."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class Guest:
    """A QEMU virtual machine owned by a test: a context manager that never leaks QEMU.

    `image` None boots firmware without a disk (used by the KVM probe). Serial output goes
    to `<workdir>/<name>.serial.log`, QEMU's own messages to `<name>.qemu.log`. With `ssh`,
    guest port 22 is forwarded to `127.0.0.1:ssh_port`; `nets` add private links.
    """

    def __init__(self, image: Path | None, workdir: Path, *, board: str = "x86_64",
                 name: str | None = None, memory_mb: int = 1024, smp: int = 2,
                 ssh: bool = True, forward: Sequence[int] = (),
                 nets: Sequence[SocketNet] = (),
                 direct: DirectBoot | None = None, snapshot: bool = False,
                 no_reboot: bool = False, accel_args: Sequence[str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        if board not in BOARDS:
            raise BuildError(f"unknown QEMU board {board!r}; known: {', '.join(BOARDS)}")
        self.board = BOARDS[board]
        if not self.board.uefi and direct is None:
            raise BuildError(f"board {board} has no firmware in QEMU: pass a DirectBoot kernel")
        self.image, self.workdir = image, workdir
        self.name = name or (image.stem if image else "guest")
        self.memory_mb, self.smp, self.ssh, self.nets = memory_mb, smp, ssh, tuple(nets)
        self.direct, self.snapshot, self.no_reboot = direct, snapshot, no_reboot
        self.accel_args, self.extra_args = accel_args, tuple(extra_args)
        self.serial_log = workdir / f"{self.name}.serial.log"
        self.qemu_log = workdir / f"{self.name}.qemu.log"
        self._ssh_port: int | None = None
        # guest TCP ports reachable on 127.0.0.1:<host port> (e.g. the agent's 7946)
        self.forwards = {p: free_port() for p in forward}
        self._proc: subprocess.Popen[bytes] | None = None
        # A socket path must fit in 108 bytes, which pytest's tmp_path does not promise.
        self._qmp_path = Path(tempfile.gettempdir()) / f"mycelium-qmp-{uuid.uuid4().hex}.sock"
        self._text, self._pending, self._offset, self._pos = "", "", 0, 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # -- command line ------------------------------------------------------------------

    def command(self) -> list[str]:
        """The QEMU argv; needs `start()` state only for the ports and sockets it names."""
        b = self.board
        argv = [b.binary, "-nodefaults", "-display", "none", *b.machine]
        if b.binary.endswith("x86_64"):
            argv += list(self.accel_args if self.accel_args is not None else accel())
        else:
            argv += list(self.accel_args if self.accel_args is not None else TCG)
        argv += ["-m", b.fixed_memory or f"{self.memory_mb}M"]
        if not b.fixed_smp:
            argv += ["-smp", str(self.smp)]
        if b.uefi:
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={_opt(OVMF_CODE)}",
                     "-drive", f"if=pflash,format=raw,file={_opt(self._vars)}"]
        if self.direct:
            d = self.direct
            argv += ["-kernel", str(d.kernel), "-append", d.append]
            argv += ["-dtb", str(d.dtb)] if d.dtb else []
            argv += ["-initrd", str(d.initrd)] if d.initrd else []
        if self.image is not None:
            snap = ",snapshot=on" if self.snapshot else ""
            argv += ["-drive", f"file={_opt(self.image)},format=raw,if={b.drive_if}{snap}"]
        if b.nic == "virtio-net-pci":
            argv += ["-device", "virtio-rng-pci"]  # first-boot key generation needs entropy
        if self.ssh:
            fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}"
                           for g, h in {22: self.ssh_port, **self.forwards}.items())
            argv += ["-netdev", f"user,id=n0,{fwd}",
                     "-device", f"{b.nic},netdev=n0,mac={mac(self.name, 0)}"]
        for i, net in enumerate(self.nets, start=1):
            argv += ["-netdev", net.netdev(f"n{i}"),
                     "-device", f"{b.nic},netdev=n{i},mac={mac(self.name, i)}"]
        argv += [*b.serial, "-serial", f"file:{_opt(self.serial_log)}"]
        argv += ["-qmp", f"unix:{_opt(self._qmp_path)},server=on,wait=off"]
        argv += ["-no-reboot"] if self.no_reboot else []
        return argv + list(self.extra_args)

    @property
    def _vars(self) -> Path:
        return self.workdir / f"{self.name}.vars.fd"


    @property
    def ssh_port(self) -> int:
        """Host port forwarded to the guest's port 22 (chosen on first use)."""
        if not self.ssh:
            raise BuildError(f"guest {self.name} was started without ssh forwarding")
        if self._ssh_port is None:
            self._ssh_port = free_port()
        return self._ssh_port

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 30.0) -> Guest:
        """Start QEMU and return once its monitor is up, so argument errors surface here."""
        if self._proc is not None:
            raise BuildError(f"guest {self.name} already started")
        if shutil.which(self.board.binary) is None:
            raise BuildError(f"{self.board.binary} not found; install qemu-system")
        if self.image is not None and not self.image.is_file():
            raise BuildError(f"disk image {self.image} is missing; build it first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.board.uefi:
            if not OVMF_CODE.is_file():
                raise BuildError(f"{OVMF_CODE} not found; install ovmf")
            shutil.copyfile(OVMF_VARS, self._vars)  # UEFI writes boot entries: one per VM
        self.serial_log.unlink(missing_ok=True)
        self.serial_log.touch()
        argv = self.command()
        with self.qemu_log.open("wb") as log:
            log.write((" ".join(argv) + "\n").encode())
            log.flush()
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        weakref.finalize(self, _kill, self._proc)
        # QMP answers once the machine is built, so device and drive errors surface here.
        deadline = time.monotonic() + ready_timeout
        while True:
            if not self.running:
                self._fail("exited at start")
            if self._qmp_path.exists():
                try:
                    self.qmp("query-status", timeout=2.0)
                    return self
                except BuildError:
                    pass
            if time.monotonic() > deadline:
                self.kill()
                raise BuildError(f"guest {self.name}: QEMU did not come up within "
                                 f"{ready_timeout:.0f} s; see {self.qemu_log}")
            time.sleep(0.1)

    def qmp(self, command: str, timeout: float = 5.0, **arguments: object) -> object:
        """Run one QMP command and return its result (QEMU allows one client at a time)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(self._qmp_path))
                f = s.makefile("rwb")
                f.readline()  # greeting
                for cmd in ({"execute": "qmp_capabilities"},
                            {"execute": command, "arguments": arguments}):
                    f.write(json.dumps(cmd).encode() + b"\n")
                    f.flush()
                    while True:
                        reply = json.loads(f.readline() or b"{}")
                        if "event" not in reply:
                            break
                    if "error" in reply or "return" not in reply:
                        raise BuildError(f"guest {self.name}: QMP {command}: "
                                         f"{reply.get('error', {}).get('desc', 'no reply')}")
                return reply["return"]
        except (OSError, ValueError) as e:
            raise BuildError(f"guest {self.name}: QMP {command} failed: {e}") from e

    def stop(self, timeout: float = 30.0) -> None:
        """ACPI power-off if the board has ACPI, then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is not None and self.running and self.board.acpi and timeout > 0:
            try:
                self.qmp("system_powerdown")
                proc.wait(timeout)
            except (BuildError, subprocess.TimeoutExpired):
                pass
        if proc is not None and self.running:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Kill QEMU now; a scratch disk does not need a clean shutdown."""
        if self._proc is not None:
            _kill(self._proc)
        self._qmp_path.unlink(missing_ok=True)

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    # -- console -----------------------------------------------------------------------

    def console(self) -> str:
        """All serial output so far, without colour codes and carriage returns."""
        try:
            with self.serial_log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self._text
        self._offset += len(chunk)
        new = self._pending + self._decoder.decode(chunk)
        tail = _ANSI_TAIL.search(new)  # an escape cut in half by the read: keep it for later
        self._pending = new[tail.start():] if tail else ""
        self._text += _ANSI.sub("", new[:tail.start()] if tail else new)
        return self._text

    def qemu_messages(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> str:
        """Wait for a regex on the console after the previous match; return the text up to it.

        Each call resumes where the last match ended, so a sequence of waits follows the
        boot in order. Fails fast if QEMU exits, and names the log to read on timeout.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            m = rx.search(text, self._pos)
            if m:
                seen, self._pos = text[self._pos:m.end()], m.end()
                return seen
            if not self.running:
                self._fail(f"exited before {rx.pattern!r} appeared on the console")
            if time.monotonic() > deadline:
                last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
                raise BuildError(f"guest {self.name}: {rx.pattern!r} not seen within "
                                 f"{timeout:.0f} s (last line: {last.strip()[:120]!r}); "
                                 f"see {self.serial_log}")
            time.sleep(0.25)

    def _fail(self, what: str) -> NoReturn:
        lines = [ln for ln in self.qemu_messages().splitlines()[1:] if ln.strip()]
        self.kill()
        raise BuildError(f"guest {self.name}: QEMU {what}: "
                         f"{lines[-1].strip() if lines else 'no message'}; see {self.qemu_log}")
