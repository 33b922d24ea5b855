"""What systemd does for the agent unit, for a test: before each start run the release
watchdog (ExecStartPre, counting starts), start `ROOT/current/bin/mycelium agent run ...`,
restart it whenever it exits (Restart=always), and run the watchdog every second meanwhile
(the timer), restarting the agent after a rollback. The agent runs from the venv `current`
points to, with PYTHONPATH removed so it imports what that venv installed.

`shared_site(dir)` links the test venv's dependencies (not mycelium itself) into one
directory that release venvs put on their path (`--release-site`), so a venv made by a test
installs only the agent's wheel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

SKIP = ("mycelium", "__editable__", "_mycelium", "__pycache__")


def shared_site(out: Path) -> Path:
    if not out.exists():
        out.mkdir(parents=True)
        site = Path(sysconfig.get_paths()["purelib"])
        for entry in site.iterdir():
            if entry.name.startswith(SKIP) or entry.suffix == ".pth":
                continue
            (out / entry.name).symlink_to(entry)
    return out


class Supervisor:
    def __init__(self, root: Path, data_dir: Path, args: list[str], log: Path) -> None:
        self.root, self.data_dir, self.args, self.log = root, data_dir, args, log
        self.exits: list[int] = []
        self.verdicts: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def watchdog(self, *extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "agent.cli", "release", "watchdog",
                              "--root", str(self.root), "--data-dir", str(self.data_dir),
                              *extra], capture_output=True, text=True).stdout
        verdict = out.split(":")[1].strip() if out.startswith("watchdog:") else out
        if verdict != "none":
            self.verdicts.append(verdict)
        return verdict

    def _run(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        while not self._stop.is_set():
            self.watchdog("--count-start", "--max-starts", "3")
            with open(self.log, "ab") as logf:
                self.proc = subprocess.Popen(
                    [str(self.root / "current" / "bin" / "mycelium"), *self.args], env=env,
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd="/")
            while self.proc.poll() is None and not self._stop.is_set():
                time.sleep(1.0)
                if self.watchdog() == "rollback":
                    self._kill()
            if self.proc.poll() is not None:
                self.exits.append(self.proc.returncode)
            time.sleep(0.5)  # RestartSec
        self._kill()  # stop() may have come while this thread was starting one

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop(self) -> None:
        self._stop.set()
        self._kill()
        self._thread.join(30)
        self._kill()


def supervise_node(node, root: Path, deps: Path, log: Path, *extra: str) -> Supervisor:
    """Stop a node `cluster_up` started and run it again under a Supervisor, from the venv
    ROOT/current points to (same data dir, no token: it rejoins as itself)."""
    from agent.lab.cluster import pid_alive
    from support.agents import wait_for

    os.killpg(node.pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(node.pid), what=f"{node.name} to stop")
    argv = node.argv[3:]  # past `python -m agent.cli`
    for flag in ("--token", "--token-file"):
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
    return Supervisor(root, Path(node.data_dir), argv + [
        "--release-root", str(root), "--release-site", str(deps), *extra], log).start()


def member(c, name: str) -> dict:
    from support.agents import api

    return next(m for m in api(c, "/api/v1/members") if m["name"] == name)  # any node


def running(c, name: str) -> str:
    """The release a live node runs, as a node that answers sees it ("" while it is not
    alive there)."""
    from agent.errors import PeerError

    try:
        m = member(c, name)
    except (PeerError, StopIteration):  # every node restarting, or not seen yet
        return ""
    return m["rel"].get("run", "") if m["state"] == "alive" and "rel" in m else ""


def push_release(c, version: str, sha: str, extra: str = "") -> None:
    from agent.authoring.identity import sign_state
    from agent.authoring.netdir import NetworkDir
    from support.agents import post_envelope

    net = NetworkDir(c.network)
    yaml = (net.network_yaml.read_text() + extra
            + f"release: {{version: {version}, sha256: {sha}}}\n")
    assert post_envelope(c, sign_state(net, yaml.encode())[1], c.nodes[0].addr)[1] == 200


def keep_log(log: Path, name: str) -> None:
    if log.exists():
        Path("/tmp/mycelium-test-logs").mkdir(exist_ok=True)
        Path(f"/tmp/mycelium-test-logs/{name}").write_bytes(log.read_bytes())
