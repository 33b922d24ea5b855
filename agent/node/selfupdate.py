"""Install a release beside the running agent, switch to it, and switch back if it fails.

Layout under the release root R (`--release-root`, /opt/mycelium on an image):

  R/venv                         the agent the image was built with (never touched here)
  R/releases/VERSION-SHA12/venv  one venv per installed release, stamped when complete
  R/current -> .../venv          what the unit runs (`R/current/bin/mycelium agent run`)
  R/release.json                 previous and pending switch, releases rolled back here

A switch is one atomic rename of a new `current` symlink over the old one. The previous
venv is kept. The switch is *pending* until the new agent writes a healthy
DATA/health.json (ready, gossiping, apply not failed, this release); the watchdog
(`mycelium release watchdog`, run by the unit's ExecStartPre before every start and by a
timer) commits it then, or, once the deadline passes, switches `current` back, records the
release as bad (this node does not install it again) and restarts the agent.

`verdict` is the watchdog's decision as a pure function, table-tested.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.desired.model import Release
from agent.errors import DataError, StorageError
from agent.gossip.member import ReleaseMeta
from agent.node.releases import extract_wheels
from agent.statefile import atomic_write
from agent.trust.release import AGENT_DIST, Manifest
from agent.tuning import RELEASE_DEADLINE

STAMP = "mycelium-release.json"  # in a release's venv: which release it is
HEALTH = "health.json"  # in the data dir, written by the agent
RESTART_EXIT = 75  # the agent exits with this to run the release `current` points to


def running_release(prefix: str = sys.prefix) -> ReleaseMeta:
    """The release this process runs: its venv's stamp, else the built-in agent."""
    try:
        d = json.loads((Path(prefix) / STAMP).read_text())
        return ReleaseMeta(str(d["sha256"]), str(d["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return ReleaseMeta("", importlib.metadata.version(AGENT_DIST))
        except importlib.metadata.PackageNotFoundError:
            return ReleaseMeta("", "")


@dataclass(frozen=True)
class Health:
    """What the agent says of itself in DATA/health.json."""

    release: str  # sha256 it runs ("" for the built-in agent)
    at: float  # wall clock of the write
    ready: bool
    gossiping: bool  # at least one live peer, or the only node
    apply: str  # the reconcile status: off | ok | applying | failed | ...

    @property
    def healthy(self) -> bool:
        return self.ready and self.gossiping and self.apply not in ("failed", "degraded")

    @classmethod
    def read(cls, path: Path) -> Health | None:
        try:
            d = json.loads(path.read_text())
            return cls(str(d["release"]), float(d["at"]), bool(d["ready"]),
                       bool(d["gossiping"]), str(d["apply"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps({"release": self.release, "at": self.at, "ready": self.ready,
                           "gossiping": self.gossiping, "apply": self.apply}).encode()


def verdict(pending: dict[str, Any] | None, health: Health | None, now: float,
            starts: int = 0, max_starts: int = 0) -> str:
    """none (no switch pending) | healthy (commit it) | wait | rollback.

    Healthy means a health file written after the switch, by the pending release. A switch
    past its deadline, or one whose agent was started `max_starts` times (a crash loop,
    when given) without reporting healthy, is rolled back."""
    if not pending:
        return "none"
    if (health is not None and health.release == pending["sha256"]
            and health.at >= pending["switched_at"] and health.healthy):
        return "healthy"
    if now >= pending["deadline"] or (max_starts and starts >= max_starts):
        return "rollback"
    return "wait"


class ReleaseRoot:
    """R: the venvs, the `current` link and release.json (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    current = property(lambda self: self.path / "current")
    record = property(lambda self: self.path / "release.json")

    def venv_for(self, release: Release) -> Path:
        return self.path / "releases" / f"{release.version}-{release.sha256[:12]}" / "venv"

    def read(self) -> dict[str, Any]:
        try:
            d = json.loads(self.record.read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def write(self, d: dict[str, Any]) -> None:
        atomic_write(self.record, (json.dumps(d, indent=2, sort_keys=True) + "\n").encode())

    def bad(self) -> list[str]:
        return [s for s in self.read().get("bad", []) if isinstance(s, str)]

    def target(self) -> Path | None:
        try:
            return Path(os.readlink(self.current))
        except OSError:
            return None

    def link(self, venv: Path) -> None:
        """Point `current` at `venv` with one rename (never a moment without it)."""
        tmp = self.path / f".current.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(venv, tmp)
        os.replace(tmp, self.current)
        dfd = os.open(self.path, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def venv_of(self, sha256: str) -> tuple[Path, str] | None:
        """(venv, version) of a complete install of release `sha256` kept here."""
        for venv in sorted(self.path.glob(f"releases/*-{sha256[:12]}/venv")):
            got = running_release(str(venv))
            if got.running == sha256:
                return venv, got.version
        return None

    def ensure_current(self) -> None:
        """First start on an image: `current` is made to point at the built-in R/venv."""
        if self.target() is None and (self.path / "venv").is_dir():
            self.link(self.path / "venv")

    def install(self, release: Release, artifact: Path, manifest: Manifest,
                python: str = "", extra_site: tuple[Path, ...] = ()) -> Path:
        """A venv for `release` from the artifact's wheels only (`--no-index`); kept if a
        complete one is there. `extra_site`: directories added to its path (a .pth file)
        whose packages satisfy dependencies, as the tests' shared dependency tree does."""
        venv = self.venv_for(release)
        stamp = venv / STAMP
        if stamp.is_file():
            return venv
        if venv.exists():
            shutil.rmtree(venv)  # a half-made venv from an interrupted install
        venv.parent.mkdir(parents=True, exist_ok=True)
        py = python or getattr(sys, "_base_executable", "") or sys.executable
        _run([py, "-m", "venv", str(venv)], "create the venv")
        if extra_site:
            site = next(venv.glob("lib/python*/site-packages"))
            (site / "_mycelium_shared.pth").write_text("".join(f"{p}\n" for p in extra_site))
        wheels = venv.parent / "wheels"
        extract_wheels(artifact, manifest, wheels)
        try:
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                  "--disable-pip-version-check", "--find-links", str(wheels),
                  f"{AGENT_DIST}=={manifest.version}"], "install the release's wheels")
        finally:
            shutil.rmtree(wheels, ignore_errors=True)
        if not (venv / "bin" / "mycelium").is_file():
            raise DataError(f"installing release {release.version} left no bin/mycelium in "
                            f"{venv}")
        atomic_write(stamp, json.dumps({"sha256": release.sha256,
                                        "version": release.version}).encode())
        return venv

    def switch(self, release: Release, venv: Path, deadline: float = RELEASE_DEADLINE,
               now: float | None = None) -> None:
        """Make `venv` current, pending until the new agent reports healthy."""
        now = time.time() if now is None else now
        d = self.read()
        previous = self.target()
        d["pending"] = {"sha256": release.sha256, "version": release.version,
                        "venv": str(venv), "previous": str(previous) if previous else "",
                        "switched_at": now, "deadline": now + deadline, "starts": 0}
        self.write(d)
        self.link(venv)

    def watchdog(self, health_file: Path, now: float | None = None, count_start: bool = False,
                 max_starts: int = 0, artifacts: Path | None = None) -> str:
        """One look at a pending switch: commit it, wait, or roll it back. The verdict.
        A commit prunes what is neither current nor previous (`prune`)."""
        now = time.time() if now is None else now
        d = self.read()
        pending = d.get("pending")
        if isinstance(pending, dict) and count_start:
            pending["starts"] = int(pending.get("starts", 0)) + 1
            self.write(d)
        starts = int(pending.get("starts", 0)) if isinstance(pending, dict) else 0
        v = verdict(pending if isinstance(pending, dict) else None, Health.read(health_file),
                    now, starts, max_starts)
        if v == "healthy":
            d["previous"] = pending["previous"]
            d["running"] = {"sha256": pending["sha256"], "version": pending["version"]}
            d.pop("pending")
            self.write(d)
            self.prune(pending, artifacts)
        elif v == "rollback":
            back = pending.get("previous") or ""
            if back:
                self.link(Path(back))
            d["bad"] = sorted(set(d.get("bad", [])) | {pending["sha256"]})
            d["rolled_back"] = {"sha256": pending["sha256"], "version": pending["version"],
                                "at": now, "to": back}
            d.pop("pending")
            self.write(d)
        return v


    def prune(self, committed: dict[str, Any], artifacts: Path | None = None) -> list[str]:
        """After a commit: remove the release venvs (127 MB each) that are neither the one
        just committed nor the previous one (R/venv, the image's, is never touched), and
        the artifacts in `artifacts` (DATA/releases) of neither, except those that came
        after the switch (a newer release fetched meanwhile). What was removed."""
        keep_venvs = {Path(p).resolve() for p in (committed["venv"], committed.get("previous"))
                      if p}
        keep_shas = {str(committed["sha256"])}
        keep_shas |= {running_release(str(v)).running for v in keep_venvs}
        gone = []
        for venv in sorted(self.path.glob("releases/*/venv")):
            if venv.resolve() not in keep_venvs:
                shutil.rmtree(venv.parent, ignore_errors=True)
                gone.append(str(venv.parent))
        if artifacts is not None and artifacts.is_dir():
            since = float(committed.get("switched_at", 0))
            for tar in sorted(artifacts.glob("*.tar")):
                try:
                    fresh = tar.stat().st_mtime >= since
                except OSError:
                    continue
                if tar.stem not in keep_shas and not fresh:
                    tar.unlink(missing_ok=True)
                    gone.append(str(tar))
        return gone


def _run(argv: list[str], what: str) -> None:
    # the new venv must see only itself: an inherited PYTHONPATH would let pip find the
    # running agent's distribution and install nothing
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StorageError(f"cannot {what}: {e}") from e
    if proc.returncode != 0:
        raise DataError(f"cannot {what}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def write_health(path: Path, health: Health) -> None:
    atomic_write(path, health.to_bytes(), 0o600)
