"""One VM on this node: check its image, run QEMU, watch it, restart it, stop it.

The rules (states, backoff, when to give up) are agent/node/vm/policy.py; this is the
I/O around them. QEMU runs in a systemd scope of its own where systemd is the init
(spec.in_scope), in its own session, so a Ctrl-C meant for the agent does not reach it,
and with the parent-death signal set, so it never outlives its agent (a SIGKILLed agent
is a dead node: its VMs go with it, and nothing holds their ports when the agent comes
back). While QEMU runs, QMP `query-status` is read every STATUS_EVERY_S.

Stopping (placement moved the VM, it was deleted, the agent stops): ACPI powerdown over
QMP, up to `stop_deadline` seconds for the guest to power off, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.errors import MyceliumError, VmError
from agent.node.vm.accel import choose_accel
from agent.node.vm.images import image_format, overlay_base, prepare_disk
from agent.node.vm.policy import DEFAULT_POLICY, Exits, Policy, State, uptime_s
from agent.node.vm.qmp import Qmp, QmpError
from agent.node.vm.spec import VmPaths, VmSpec, in_scope, qemu_argv

log = logging.getLogger("mycelium.vm")

STOP_DEADLINE_S = 30.0  # for the guest to power off after ACPI powerdown
TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
QMP_CONNECT_S = 10.0  # for QEMU to open its QMP socket after launch
STATUS_EVERY_S = 2.0
STARTING_EVERY_S = 0.05  # QMP connects and status reads while the VM starts or resumes
PR_SET_PDEATHSIG = 1

# (stream, disk out, base image, its format) -> seq of the checkpoint written, or None
ResumeDisk = Callable[[Path, Path, Path, str], int | None]


def systemd_scopes() -> bool:
    """Transient scopes need systemd as the init and root to create them."""
    return (Path("/run/systemd/system").is_dir() and os.geteuid() == 0
            and shutil.which("systemd-run") is not None)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the agent dies (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class VmSupervisor:
    def __init__(self, spec: VmSpec, paths: VmPaths, image_cache: Path, *,
                 policy: Policy = DEFAULT_POLICY, stop_deadline: float = STOP_DEADLINE_S,
                 qemu: str = "qemu-system-x86_64",
                 accel: Callable[[str], Awaitable[str]] = choose_accel,
                 on_change: Callable[[], None] = lambda: None,
                 resume: Callable[[Path], int | None] = lambda _: None,
                 resume_disk: ResumeDisk = lambda *_: None) -> None:
        self.spec, self.paths, self.cache = spec, paths, image_cache
        self._resume = resume  # writes a checkpoint stream to resume from: its seq or None
        self._resume_disk = resume_disk  # the same with the disk, for a VM with one
        self._started = False  # QEMU was started once: later starts never resume
        self._on_resumed_disk = False  # it resumed with resume.qcow2, its disk from then on
        self.boot = "cold"
        self.policy, self.stop_deadline, self.qemu = policy, stop_deadline, qemu
        self._accel, self._on_change = accel, on_change
        self.state: State = "stopped"
        self.reason = ""
        self.accel = ""
        self.qmp_status = ""
        self.pid: int | None = None
        self.started: float | None = None  # monotonic, of the current QEMU
        self.running_at: float | None = None  # wall clock: when QMP first said running
        self.launched_at: float | None = None  # wall clock: when the current QEMU started
        self.quit_on_stop = False  # stop with QMP `quit`: a paused guest ignores ACPI
        self.exits = Exits()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: Qmp | None = None

    # --- control ---------------------------------------------------------------------

    def start(self, after: Awaitable[Any] | None = None) -> None:
        """Run the VM (once `after`, e.g. the stop of its previous spec, is done)."""
        self._task = asyncio.create_task(self._main(after), name=f"vm-{self.spec.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def status(self, now: float | None = None) -> dict[str, Any]:
        up = uptime_s(self.state, self.started, time.monotonic() if now is None else now)
        return {"name": self.spec.name, "state": self.state, "reason": self.reason,
                "accel": self.accel, "qmp": self.qmp_status, "pid": self.pid,
                "uptime_s": None if up is None else round(up, 1),
                "restarts": self.exits.count, "cpus": self.spec.cpus,
                "memory_mb": self.spec.memory_mb,
                "ports": [f"{f.port}->{f.target}/{f.protocol}" for f in self.spec.forwards],
                "boot": self.boot, "running_at": self.running_at,
                "launched_at": self.launched_at}

    @property
    def qmp(self) -> Qmp | None:
        """The QMP connection of the running VM (for checkpoints), else None."""
        return self._qmp if self.state == "running" else None

    def _set(self, state: State, reason: str = "") -> None:
        if (state, reason) != (self.state, self.reason):
            (log.warning if state == "failed" else log.info)(
                "vm %s: %s%s", self.spec.name, state, f" ({reason})" if reason else "")
        self.state, self.reason = state, reason
        self._on_change()

    # --- the loop --------------------------------------------------------------------

    async def _main(self, after: Awaitable[Any] | None) -> None:
        try:
            if after is not None:
                await after
            await self._loop()
        except Exception as e:  # a bug here must show in status, not vanish in a task
            log.exception("vm %s supervisor", self.spec.name)
            self._set("failed", f"supervisor error: {type(e).__name__}: {e}")
            await self._kill()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._set("starting")
            try:
                disk = await prepare_disk(self.spec, self.paths, self.cache)
            except VmError as e:  # bad input: retrying cannot help
                return self._set("failed", str(e))
            except (MyceliumError, OSError) as e:  # a download or a disk: try again later
                if not await self._after_exit(0.0, f"preparing the disk: {e}"):
                    return
                continue
            if (why := self.paths.too_long()) is not None:
                return self._set("failed", why)
            self.accel = await self._accel(self.qemu)
            incoming, disk = await self._incoming(disk)
            argv = qemu_argv(self.spec, self.paths, self.accel, disk, self.qemu)
            if systemd_scopes():
                argv = in_scope(argv, self.spec.name)
            argv += incoming
            ran, why = await self._run_once(argv)
            if self._stop.is_set():
                break
            if not await self._after_exit(ran, why):
                return
        self._set("stopped")

    async def _incoming(self, disk: Path | None) -> tuple[list[str], Path | None]:
        """`-incoming` from the last good checkpoint a backup holds (VM memory
        replication), or nothing: a cold boot. For a VM with a disk, the checkpoint's
        disk too (resume.qcow2 over the base image), or a cold boot from `disk`. Only this
        copy's first start resumes: a restart after its QEMU exited would roll the guest
        back to that checkpoint; it boots cold, from resume.qcow2 if it resumed with it
        (the disk as the guest left it)."""
        stream = self.paths.dir / "resume.stream"
        resumed = self.paths.dir / "resume.qcow2"
        if self._started:
            self.boot = "cold"
            return [], resumed if disk is not None and self._on_resumed_disk else disk
        self._started = True
        try:
            stream.parent.mkdir(parents=True, exist_ok=True)
            seq = await asyncio.to_thread(self._resume, stream) if disk is None else \
                await asyncio.to_thread(self._resume_with_disk, stream, resumed)
        except (MyceliumError, OSError) as e:
            log.warning("vm %s: no resume from a checkpoint: %s", self.spec.name, e)
            seq = None
        self.boot = "cold" if seq is None else f"resumed from checkpoint {seq}"
        if seq is None:
            return [], disk
        self._on_resumed_disk = disk is not None
        return ["-incoming", f"exec:cat {shlex.quote(str(stream))}"], \
            disk if disk is None else resumed

    def _resume_with_disk(self, stream: Path, out: Path) -> int | None:
        base = overlay_base(self.paths)
        return None if base is None else self._resume_disk(stream, out, base,
                                                            image_format(base))

    async def _after_exit(self, ran: float, why: str) -> bool:
        """Back off before the next start (True), or report failed / stopped (False)."""
        self.exits, verdict = self.policy.after_exit(self.exits, ran, why)
        if not verdict.restart:
            self._set("failed", verdict.reason)
            return False
        self._set("restarting", verdict.reason)
        try:
            await asyncio.wait_for(self._stop.wait(), verdict.delay)
        except TimeoutError:
            return True
        self._set("stopped")
        return False

    async def _run_once(self, argv: list[str]) -> tuple[float, str]:
        """Run QEMU until it exits or a stop is asked: (seconds it ran, why it exited)."""
        for p in (self.paths.qmp, self.paths.serial):
            p.unlink(missing_ok=True)
        t0 = time.monotonic()
        with self.paths.stderr.open("wb") as err:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=err, start_new_session=True,
                    preexec_fn=_die_with_parent)
            except OSError as e:
                return 0.0, f"cannot run {argv[0]}: {e.strerror}"
        self.pid, self.started, self.launched_at = self._proc.pid, t0, time.time()
        watch = asyncio.create_task(self._watch_qmp())
        stop = asyncio.create_task(self._stop.wait())
        exited = asyncio.create_task(self._proc.wait())
        try:
            await asyncio.wait({stop, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._shutdown()
        finally:
            for t in (watch, stop, exited):
                t.cancel()
            await asyncio.gather(watch, stop, exited, return_exceptions=True)
            await self._close_qmp()
            await self._kill()
        rc = self._proc.returncode
        self.pid = self.started = self.running_at = self.launched_at = None
        self.qmp_status = ""
        return time.monotonic() - t0, f"exit status {rc}: {self._last_words()}"

    async def _watch_qmp(self) -> None:
        deadline = time.monotonic() + QMP_CONNECT_S
        while self._qmp is None:
            try:
                self._qmp = await Qmp.connect(self.paths.qmp)
            except QmpError:
                if time.monotonic() > deadline:
                    self.qmp_status = "no QMP"
                    return
                await asyncio.sleep(STARTING_EVERY_S)
        while True:
            try:
                self.qmp_status = await self._qmp.status()
            except QmpError as e:
                self.qmp_status = f"error: {e}"
                return
            if self.state == "starting" and self.qmp_status == "running":
                self.running_at = time.time()
                self._set("running")
            elif self.state == "starting" and self.qmp_status == "paused" \
                    and self.boot != "cold":
                # a checkpoint cut in a pause (a VM with a disk) loads paused
                try:
                    await self._qmp.execute("cont")
                except QmpError as e:
                    log.warning("vm %s: cont after resume: %s", self.spec.name, e)
                await asyncio.sleep(0.1)
                continue
            # while starting, look often: a resumed VM is running (or paused, to be
            # continued) a moment after its incoming migration, and a planned move's
            # pause is measured (and ends) close to when the guest runs again
            await asyncio.sleep(STATUS_EVERY_S if self.state == "running" else STARTING_EVERY_S)

    async def _shutdown(self) -> None:
        """ACPI powerdown, then the deadline, then TERM and KILL (in _kill)."""
        proc = self._proc
        assert proc is not None
        how = "quit (its memory went on elsewhere)" if self.quit_on_stop else "ACPI powerdown"
        self._set("stopping", how)
        if self._qmp is not None:
            try:
                await self._qmp.execute("quit" if self.quit_on_stop else "system_powerdown")
            except QmpError:
                pass
        try:
            await asyncio.wait_for(proc.wait(), self.stop_deadline)
        except TimeoutError:
            self._set("stopping", f"no power-off within {self.stop_deadline:g} s: killing")

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), TERM_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _close_qmp(self) -> None:
        if self._qmp is not None:
            q, self._qmp = self._qmp, None
            await q.close()

    def _last_words(self) -> str:
        """QEMU's last stderr line (why it exited), shortened."""
        try:
            lines = self.paths.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:200] if lines else "no message"
