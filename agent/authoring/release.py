"""`mycelium release create`: the agent and its dependencies as one content-addressed file.

The wheelhouse is either given (`--wheelhouse`, e.g. the one `build.py` made for an
image) or built here: with `pip wheel` from the source checkout for this machine's Python
and architecture, or, with `--arch`, for a node of that architecture on the image's
Python (CPython 3.11, glibc 2.36: Debian bookworm): mycelium's own wheel is built here
(it is pure Python, as is pysyncobj, published as an sdist only) and every dependency's
manylinux wheel for that platform is downloaded. The image build (image/wheels.py) makes
its wheelhouse the same way. The artifact's SHA-256 is what network.yaml's `release:`
names.
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
# a board's Debian architecture, or a machine type, -> the machine type in wheel tags
MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "x86_64": "x86_64", "aarch64": "aarch64"}
NODE_PYTHON = "3.11"  # the images' Python (Debian bookworm)
# glibc 2.36 runs every manylinux wheel up to 2.36; pip wants each tag named.
GLIBC = ("2_36", "2_35", "2_34", "2_28", "2_24", "2_17", "2_5")
PIP = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")


def platform_args(arch: str) -> list[str]:
    """pip's `--platform` arguments for a node of `arch` (amd64, arm64, x86_64, aarch64)."""
    if arch not in MACHINES:
        raise ConfigError(f"unknown architecture {arch!r}; use one of "
                          f"{', '.join(sorted(MACHINES))}")
    m = MACHINES[arch]
    tags = [f"manylinux_{g}_{m}" for g in GLIBC] + [f"manylinux2014_{m}"]
    if m == "x86_64":
        tags += ["manylinux1_x86_64", "manylinux2010_x86_64"]
    return [arg for t in tags for arg in ("--platform", t)]


def build_wheelhouse(source: Path, out: Path, arch: str | None = None) -> None:
    """mycelium's wheel and every dependency's (from pip's cache or the index): for this
    machine, or for a node of `arch` (see the module docstring)."""
    if not (source / "pyproject.toml").is_file():
        raise ConfigError(f"{source} holds no pyproject.toml; pass --source CHECKOUT or "
                          "--wheelhouse DIR")
    if arch is None:
        _pip(["wheel", "-w", str(out), str(source)], "pip wheel failed")
        return
    argv = platform_args(arch)  # an unknown architecture fails before any pip run
    _pip(["wheel", "--no-deps", "-w", str(out), str(source), "pysyncobj"],
         "cannot build the mycelium wheel")
    wheel = next(out.glob("mycelium-*.whl"))
    _pip(["download", "-d", str(out), "--only-binary=:all:", "--find-links", str(out),
          "--python-version", NODE_PYTHON, "--implementation", "cp", *argv, str(wheel)],
         f"cannot download dependency wheels for {arch}")


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([*PIP, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TransportError(f"{what}: {proc.stderr.strip()[-400:]} (is the package index "
                             "reachable? or pass --wheelhouse DIR)")


def create_release(out: Path, wheelhouse: Path | None = None, source: Path = SOURCE,
                   arch: str | None = None) -> tuple[Path, str, Manifest]:
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            raise ConfigError(f"--wheelhouse {wheelhouse} is not a directory")
        return pack(wheelhouse, out)
    with tempfile.TemporaryDirectory(prefix="mycelium-wheels-") as tmp:
        build_wheelhouse(source, Path(tmp), arch)
        return pack(Path(tmp), out)
