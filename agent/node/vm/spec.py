"""What one VM is, and the QEMU command line that runs it (pure: no files, no processes).

A VM boots either from a disk (a qcow2 overlay over its verified base image, per node)
or directly from a kernel, initrd and command line (then a disk image is optional). QEMU
gets a QMP unix socket (the supervisor's control line), and its serial port goes to a unix
socket with a log file behind it: the log keeps everything the guest printed, the socket
is what `mycelium vm console` attaches to. Ports are forwarded from the node to the guest
by QEMU's user network (hostfwd), so the VM needs no bridge or root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.desired.model import DesiredState, Endophyte, NodeShare

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


@dataclass(frozen=True)
class Forward:
    port: int  # on the node
    target: int  # in the guest
    protocol: str = "tcp"


@dataclass(frozen=True)
class VmSpec:
    """A VM as the supervisor runs it; two specs that differ mean a restart."""

    name: str
    cpus: int = 1
    memory_mb: int = 512
    image: str = ""
    image_sha256: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    forwards: tuple[Forward, ...] = ()

    @classmethod
    def of(cls, e: Endophyte) -> VmSpec:
        return cls(e.name, e.cpus, e.memory_mb, e.image, e.image_sha256, e.kernel, e.initrd,
                   e.cmdline, tuple(Forward(p.port, p.target or p.port, p.protocol)
                                    for p in e.ports))


@dataclass(frozen=True)
class VmPaths:
    """Where one VM keeps its files on the node (data dir/vms/NAME)."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.sock"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.qcow2"

    @property
    def stderr(self) -> Path:
        return self.dir / "qemu.err"

    def too_long(self) -> str | None:
        """A unix socket path over the kernel's limit, or None."""
        for p in (self.qmp, self.serial):
            if len(str(p).encode()) > SOCKET_PATH_MAX:
                return f"{p} is longer than {SOCKET_PATH_MAX} bytes (a unix socket path)"
        return None


def _opt(p: Path | str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return str(p).replace(",", ",,")


def accel_args(accel: str, cpus: int) -> list[str]:
    """KVM when the probe passed; else multi-threaded TCG (one host thread per vCPU)."""
    if accel == "kvm":
        return ["-accel", "kvm"]
    return ["-accel", "tcg,thread=multi"]


def qemu_argv(spec: VmSpec, paths: VmPaths, accel: str, disk: Path | None,
              qemu: str = "qemu-system-x86_64") -> list[str]:
    """The QEMU command for `spec`. `disk` is the overlay to boot from (None: no disk)."""
    argv = [qemu, "-name", spec.name, *accel_args(accel, spec.cpus),
            "-smp", str(spec.cpus), "-m", str(spec.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-qmp", f"unix:{_opt(paths.qmp)},server=on,wait=off",
            "-chardev", f"socket,id=ser0,path={_opt(paths.serial)},server=on,wait=off,"
                        f"logfile={_opt(paths.serial_log)},logappend=on",
            "-serial", "chardev:ser0"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    if disk is not None:
        # id and node name: what disk replication names in QMP (diskckpt.py)
        argv += ["-drive", f"file={_opt(disk)},format=qcow2,if=virtio,cache=writeback,"
                           "id=disk0,node-name=vmdisk"]
    fwd = "".join(f",hostfwd={f.protocol}::{f.port}-:{f.target}" for f in spec.forwards)
    argv += ["-netdev", f"user,id=n0{fwd}", "-device", "e1000,netdev=n0"]
    return argv


def in_scope(argv: list[str], name: str) -> list[str]:
    """`argv` run in a transient systemd scope of its own (mycelium-vm-NAME.scope in
    mycelium-vms.slice), so the VM's CPU and memory can be limited and accounted apart from
    the agent. systemd-run --scope execs the command itself: the PID stays QEMU's."""
    return ["systemd-run", "--scope", "--quiet", "--collect", f"--unit=mycelium-vm-{name}",
            "--slice=mycelium-vms.slice", *argv]


def wanted_vms(state: DesiredState | None, share: NodeShare | None) -> dict[str, VmSpec]:
    """The VMs this node runs: those its share makes it primary for, while the state
    lets the VM runtime load (components.vm_runtime). Backups run nothing until RAM
    replication (issue 15)."""
    if state is None or share is None or not state.components.vm_runtime:
        return {}
    by_name = {e.name: e for e in state.endophytes}
    return {n: VmSpec.of(by_name[n]) for n in share.endophytes_primary if n in by_name}
