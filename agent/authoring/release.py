"""`mycelium release create`: the agent and its dependencies as one content-addressed file.

The wheelhouse is either given (`--wheelhouse`, e.g. the one `build.py` made for an
image) or built here with `pip wheel` from the source checkout, for this machine's Python
and architecture. The artifact's SHA-256 is what network.yaml's `release:` names.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from agent.errors import ConfigError, TransportError
from agent.node.releases import pack
from agent.trust.release import Manifest

SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding pyproject.toml


def build_wheelhouse(source: Path, out: Path) -> None:
    """mycelium's wheel and every dependency's (from pip's cache or the index)."""
    if not (source / "pyproject.toml").is_file():
        raise ConfigError(f"{source} holds no pyproject.toml; pass --source CHECKOUT or "
                          "--wheelhouse DIR")
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check",
                           "wheel", "-w", str(out), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise TransportError(f"pip wheel failed: {proc.stderr.strip()[-400:]} (is the "
                             "package index reachable? or pass --wheelhouse DIR)")


def create_release(out: Path, wheelhouse: Path | None = None,
                   source: Path = SOURCE) -> tuple[Path, str, Manifest]:
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            raise ConfigError(f"--wheelhouse {wheelhouse} is not a directory")
        return pack(wheelhouse, out)
    with tempfile.TemporaryDirectory(prefix="mycelium-wheels-") as tmp:
        build_wheelhouse(source, Path(tmp))
        return pack(Path(tmp), out)
