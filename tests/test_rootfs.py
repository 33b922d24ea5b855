"""Reconcile end to end against a real Debian rootfs (mmdebstrap, cached between runs).

The same `mycelium apply` / reconcile code a node runs, pointed at `@chroot/DIR`; testinfra
then checks the machine the way it would check a booted node.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

from agent.desired.plan import assumed_share, plan_node
from agent.desired.schema import parse_state
from agent.node.reconcile import Reconciler
from recipes.params import K3sParams
from support.rootfs import fresh_rootfs, wheels

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuX4oXdV1z8E4Q5v8d0bYg6l4b8v3Yy6x0a9N2YkqXo op@lap"
STATE = f"""schema: 1
network: {{name: lab}}
nodes:
  - {{name: node1, role: rhizomorph}}
users:
  - {{name: admin, sudo: true, ssh_keys: ["{KEY}"]}}
  - {{name: viewer}}
"""


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = fresh_rootfs(tmp_path_factory.mktemp("rootfs") / "root")
    # what the image builder puts there: the wheels the agent installs from
    shutil.copytree(wheels(tmp_path_factory.mktemp("wheels") / "w"),
                    root / "opt/mycelium/wheels")
    return root


@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("state") / "network.yaml"
    p.write_text(STATE)
    return p


def mycelium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=900)


def apply(rootfs: Path, state_file: Path) -> subprocess.CompletedProcess[str]:
    return mycelium("apply", "--state", str(state_file), "--node", "node1",
                    "--target", f"@chroot{rootfs}")


def test_plan_changes_nothing_then_apply_converges_and_is_idempotent(rootfs, state_file):
    before = (rootfs / "etc/hostname").read_text()
    plan = mycelium("plan", "--state", str(state_file), "--node", "node1", "--target",
                    f"@chroot{rootfs}", "-o", "json")
    assert plan.returncode == 0, plan.stderr
    report = json.loads(plan.stdout)["report"]
    would = {o["name"] for o in report["ops"] if o["changed"]}
    assert "base | User admin" in would and "agent | Agent virtual environment" in would
    assert (rootfs / "etc/hostname").read_text() == before  # dry run: nothing changed
    assert not (rootfs / "opt/mycelium/venv").exists()

    first = apply(rootfs, state_file)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed" in first.stdout
    second = apply(rootfs, state_file)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to change" in second.stdout, second.stdout

    host = testinfra.get_host(str(rootfs), connection="chroot")
    assert host.file("/etc/hostname").content_string.strip() == "node1"
    admin = host.user("admin")
    assert "sudo" in admin.groups and admin.shell == "/bin/bash"
    keys = host.file("/home/admin/.ssh/authorized_keys")
    assert keys.content_string.strip() == KEY and keys.user == "admin"
    assert "sudo" not in host.user("viewer").groups
    assert host.file("/etc/sudoers.d/mycelium-admin").mode == 0o440
    sshd = host.file("/etc/ssh/sshd_config.d/mycelium.conf")
    assert sshd.contains("^PasswordAuthentication no") and sshd.mode == 0o644
    assert host.file("/var/lib/mycelium").mode == 0o700
    for unit in ("mycelium-agent", "ssh", "systemd-networkd", "systemd-timesyncd"):
        assert host.service(unit).is_enabled, unit
    assert host.run("/opt/mycelium/venv/bin/mycelium --help").rc == 0
    assert host.file("/etc/systemd/journald.conf.d/mycelium.conf").contains("SystemMaxUse=64M")
    assert not host.file("/usr/local/bin/k3s").exists  # no endomycetes: K3s not loaded


def test_drift_is_corrected(rootfs, state_file):
    assert apply(rootfs, state_file).returncode == 0
    (rootfs / "etc/systemd/system/mycelium-agent.service").unlink()
    subprocess.run(["chroot", str(rootfs), "systemctl", "disable", "ssh"], check=True,
                   capture_output=True)
    (rootfs / "etc/sysctl.d/90-mycelium.conf").write_text("# tampered\n")
    fixed = apply(rootfs, state_file)
    assert fixed.returncode == 0, fixed.stdout
    for op in ("Agent unit", "ssh", "sysctl"):
        assert f"changed base | {op}" in fixed.stdout or f"changed agent | {op}" in fixed.stdout
    host = testinfra.get_host(str(rootfs), connection="chroot")
    assert host.service("ssh").is_enabled
    assert host.file("/etc/sysctl.d/90-mycelium.conf").contains("tcp_syncookies")
    assert "nothing to change" in apply(rootfs, state_file).stdout


def test_reconcile_loop_reports_failure_keeps_last_good_and_recovers(rootfs, state_file,
                                                                     tmp_path):
    state = parse_state(state_file.read_bytes())
    good = plan_node(state, 7, "node1", assumed_share(state, "node1"))
    bad_artifact = tmp_path / "k3s"
    bad_artifact.write_bytes(b"not the k3s you asked for\n")
    bad = plan_node(state, 8, "node1", assumed_share(state, "node1"))
    bad = type(bad)(**{**bad.__dict__, "k3s": K3sParams("server", str(bad_artifact),
                                                         "0" * 64)})
    plans = [good]

    async def scenario() -> list[dict]:
        seen = []
        # run_once directly: the loop task (and its start-up kick) would race these runs
        rec = Reconciler(tmp_path, f"@chroot{rootfs}", lambda: plans[-1])
        for plan in (good, good, bad, good):  # the first may change things
            plans.append(plan)
            assert await rec.run_once() is (plan is good)
            seen.append(dict(rec.status))
        return seen

    _, ok, degraded, recovered = asyncio.run(scenario())
    assert ok["status"] == "ok" and ok["applied_version"] == 7 and ok["changed"] == 0
    assert degraded["status"] == "degraded"
    assert degraded["applied_version"] == 7  # the last good version is kept
    assert "sha256" in degraded["error"] + degraded["failure"]["output"]
    assert recovered["status"] == "ok" and "failure" not in recovered
    saved = json.loads((tmp_path / "reconcile.json").read_text())
    assert saved["applied_version"] == 7 and saved["status"] == "ok"


def test_sigkill_during_apply_next_run_completes_and_then_changes_nothing(state_file,
                                                                          tmp_path):
    """Issue 12 §3: an apply killed (with everything it started) while it installs the
    agent's virtual environment leaves a half-written tree; the next run must finish the
    job and the one after must find nothing to change."""
    import os
    import signal
    import time

    rootfs = fresh_rootfs(tmp_path / "root")
    shutil.copytree(wheels(tmp_path / "w"), rootfs / "opt/mycelium/wheels")
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "apply", "--state",
                             str(state_file), "--node", "node1", "--target",
                             f"@chroot{rootfs}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    venv = rootfs / "opt/mycelium/venv"
    deadline = time.monotonic() + 600
    while not (venv / "bin").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the apply ended before the venv was started: " + \
        (proc.stdout.read() if proc.stdout else "")
    time.sleep(0.5)  # into the package installs
    os.killpg(proc.pid, signal.SIGKILL)
    killed_output = proc.communicate()[0]
    assert "changed agent | Agent virtual environment" not in killed_output  # it was cut
    resumed = apply(rootfs, state_file)
    print(f"\nkilled mid-venv, then:\n{resumed.stdout[-1500:]}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "changed agent | Agent virtual environment" in resumed.stdout
    host = testinfra.get_host(str(rootfs), connection="chroot")
    assert host.run("/opt/mycelium/venv/bin/mycelium --help").rc == 0
    again = apply(rootfs, state_file)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout
