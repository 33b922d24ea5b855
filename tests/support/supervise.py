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
