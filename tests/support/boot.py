"""What the QEMU boot tests and image figures share: a network whose only user, `tester`,
has a fresh SSH key; a medium bigger than the image; SSH into a guest with testinfra; the
guests' serial log tails when a test fails."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import testinfra

from image.qemu import Guest
from support.rootfs import need_root

READY = "mycelium agent ready"  # the console line a node's agent prints once it serves


def run(*cmd: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    """stdout of `cmd`; a failure shows the command and the tails of both outputs."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def make_network(d: Path, nodes: str, name: str = "boot") -> tuple[Path, Path]:
    """A network at d/net with `nodes` (network.yaml list lines) whose only user is
    `tester` with a fresh SSH key at d/id; returns (net, key)."""
    need_root()
    run(sys.executable, "-m", "agent.cli", "init", "--network-name", name, "--dir",
        str(d / "net"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id"), "-C", "tester")
    key = (d / "id.pub").read_text().strip()
    y = d / "net/network.yaml"
    text = fill_section(y.read_text(), "nodes:", nodes)
    y.write_text(fill_section(text, "users:", f'  - {{name: tester, sudo: true, '
                                              f'ssh_keys: ["{key}"]}}'))
    return d / "net", d / "id"


def fill_section(text: str, line: str, entries: str) -> str:
    """network.yaml as `init` writes it with `entries` (YAML lines) under the section
    whose line is `line` exactly (e.g. "nodes:" or "  endomycetes:"): the template leaves
    those sections empty with commented examples below them."""
    head, sep, tail = text.partition(f"\n{line}\n")
    if not sep:
        raise AssertionError(f"network.yaml template has no {line.strip()!r} line")
    return f"{head}\n{line}\n{entries.rstrip()}\n{tail}"


def grow(img: Path, extra_mb: int) -> None:
    """A bigger "medium" than the image: first boot grows the root into it."""
    with img.open("r+b") as f:
        f.truncate(img.stat().st_size + extra_mb * 2**20)


def ssh_host(g: Guest, key: Path, timeout: float = 60, connect_timeout: int = 30,
             guests: tuple[Guest, ...] = ()):
    """A testinfra host for `tester` on the guest, once SSH lets `tester` in and sudo works;
    a timeout shows the serial log tails of `guests` (none by default)."""
    host = testinfra.get_host(f"paramiko://tester@127.0.0.1:{g.ssh_port}?ssh_identity_file="
                              f"{key}&stricthostkeychecking=no&timeout={connect_timeout}",
                              sudo=True)
    wait_ssh(host, timeout, guests)
    return host


def wait_ssh(host, timeout: float, guests: tuple[Guest, ...] = ()) -> None:
    """Until a command runs as `tester` with sudo: connection refused, authentication
    refused (the user or its key not made yet: the node has not reconciled) and sudo not
    yet allowed are all retried until the deadline, each time on a fresh connection. On
    timeout the error names the last failure and carries the serial log tails of `guests`."""
    end = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            r = host.run("true")
            if r.rc == 0:
                return
            last = f"`sudo true` exited {r.rc}: {r.stderr.strip()[-300:]}"
        except Exception as e:  # noqa: BLE001 - refused, reset, auth failed: all retried
            last = f"{type(e).__name__}: {e}"
        _drop_connection(host)
        if time.monotonic() > end:
            tails = f"\n{serial_tails(guests)}" if guests else ""
            raise AssertionError(f"SSH as tester failed for {timeout:.0f} s; last: {last}"
                                 + tails)
        time.sleep(2)


def _drop_connection(host) -> None:
    """Forget testinfra's cached paramiko client, so the next try connects and
    authenticates again instead of reusing a half-open or refused session."""
    client = host.backend.__dict__.pop("client", None)
    if client is not None:
        client.close()


def serial_tails(guests: tuple[Guest, ...] | list[Guest], lines: int = 60) -> str:
    """The last `lines` lines of each guest's serial log, headed by its name and path."""
    out = []
    for g in guests:
        tail = g.console().splitlines()[-lines:]
        out.append(f"--- {g.name}: last {len(tail)} lines of {g.serial_log} ---\n"
                   + "\n".join(tail))
    return "\n".join(out)


@contextmanager
def serial_on_failure(*guests: Guest, lines: int = 60) -> Iterator[None]:
    """Print every guest's serial log tail when the block fails, then re-raise."""
    try:
        yield
    except BaseException:
        print(serial_tails(guests, lines))
        raise
