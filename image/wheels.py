"""The wheelhouse: mycelium and its dependencies as wheels, for a node's Python.

Nodes install the agent from these wheels only (no package index at run time). For a
foreign architecture pip downloads manylinux wheels for that platform; mycelium itself
and pure-Python dependencies are platform independent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.authoring.release import build_wheelhouse as wheels_for
from agent.errors import MyceliumError
from image.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent


def build_wheelhouse(out: Path, arch: str = "amd64") -> Path:
    """Fill `out` with wheels for CPython 3.11 on Debian bookworm (glibc 2.36), as
    `mycelium release create --arch` does (agent/authoring/release.py)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        wheels_for(ROOT, out, arch)
    except MyceliumError as e:
        raise BuildError(str(e)) from e
    return out
