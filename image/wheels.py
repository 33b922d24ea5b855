"""The wheelhouse: mycelium and its dependencies as wheels, for a node's Python.

Nodes install the agent from these wheels only (no package index at run time). For a
foreign architecture pip downloads manylinux wheels for that platform; mycelium itself
and pure-Python dependencies are platform independent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from image.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# glibc 2.36 runs every manylinux wheel up to 2.36; pip wants each tag named.
GLIBC = ("2_36", "2_35", "2_34", "2_28", "2_24", "2_17", "2_5")


def _platforms(arch: str) -> list[str]:
    m = MACHINES[arch]
    tags = [f"manylinux_{g}_{m}" for g in GLIBC] + [f"manylinux2014_{m}"]
    if arch == "amd64":
        tags += ["manylinux1_x86_64", "manylinux2010_x86_64"]
    return [arg for t in tags for arg in ("--platform", t)]


def build_wheelhouse(out: Path, arch: str = "amd64") -> Path:
    """Fill `out` with wheels for CPython 3.11 on Debian bookworm (glibc 2.36)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # pysyncobj is published as an sdist only; it is pure Python, so a wheel built here
    # serves every architecture.
    own = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(out), str(ROOT), "pysyncobj"],
                         capture_output=True, text=True)
    if own.returncode != 0:
        raise BuildError(f"cannot build the mycelium wheel: {own.stderr.strip()[-300:]}")
    deps = [*pip, "download", "-d", str(out), "--only-binary=:all:", "--find-links", str(out),
            "--python-version", "3.11", "--implementation", "cp", *_platforms(arch)]
    wheel = next(out.glob("mycelium-*.whl"))
    proc = subprocess.run([*deps, str(wheel)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"cannot download dependency wheels for {arch}: "
                         f"{proc.stderr.strip()[-400:]} (is PyPI reachable?)")
    return out
