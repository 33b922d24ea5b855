"""Operation installing the mycelium agent into its own virtual environment.

Installs only from a local wheelhouse (`--no-index`): nodes need no package index, and
what runs is exactly what was built. The digest of the wheelhouse is stamped into the
venv, so the install is repeated only when the wheels change.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, OperationValueError, operation

from recipes.artifact import file_sha256
from recipes.facts import Stamp

STAMP = ".mycelium-wheels"


class WheelhouseDigest(FactBase):
    """SHA-256 over the names and contents of the wheels in a directory, or None."""

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return (f"cd {p} 2>/dev/null && ls -1 | grep '\\.whl$' | LC_ALL=C sort | "
                "xargs -r sha256sum | sha256sum | cut -c1-64 || true")

    def process(self, output: list[str]) -> str | None:
        line = "".join(output).strip()
        # sha256 of empty input: the directory holds no wheels
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        return line if len(line) == 64 and line != empty else None


def wheelhouse_digest(path: Path) -> str:
    """What WheelhouseDigest reports for the same wheels, computed on the controller."""
    lines = "".join(f"{file_sha256(w)}  {w.name}\n" for w in sorted(path.glob("*.whl")))
    return hashlib.sha256(lines.encode()).hexdigest()


@operation()
def installed(venv: str, wheelhouse: str, digest: str = "") -> Generator[str]:
    """`digest` is given when the wheels are uploaded in the same run (not there yet).

    A built image ships the venv without its wheelhouse (the wheels would double the
    agent's share of the image): with no wheels to update from, an installed venv is kept
    as it is. The image also leaves pip out of the venv; `ensurepip` puts it back from
    Debian's bundled wheel (python3-venv) when new wheels arrive, without a package index.
    """
    digest = digest or host.get_fact(WheelhouseDigest, path=wheelhouse) or ""
    stamp = host.get_fact(Stamp, path=f"{venv}/{STAMP}")
    if not digest:
        if stamp:
            host.noop(f"agent in {venv} kept as installed (no wheels in {wheelhouse})")
            return
        raise OperationValueError(f"no wheels in {wheelhouse}: build them with "
                                  "image.wheels.build_wheelhouse (as build.py does) and "
                                  "copy them there")
    if stamp == digest:
        host.noop(f"agent in {venv} is up to date")
        return
    v, w = shlex.quote(venv), shlex.quote(wheelhouse)
    yield f"[ -x {v}/bin/python ] || python3 -m venv {v}"
    yield (f"{v}/bin/python -m pip --version >/dev/null 2>&1 || "
           f"{v}/bin/python -m ensurepip >/dev/null")
    yield (f"{v}/bin/python -m pip install -q --no-index --find-links {w} "
           "--disable-pip-version-check --upgrade --force-reinstall mycelium")
    yield f"echo {digest} > {v}/{STAMP}"
