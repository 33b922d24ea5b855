"""Operation placing a checked artifact (K3s binary, airgap images) on the machine.

The SHA-256 is checked before use: a local file is checked on the controller before it
is uploaded, a URL is checked on the machine before the file takes its final name, so a
wrong or truncated download never replaces a good binary.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator
from pathlib import Path

from pyinfra import host
from pyinfra.api import OperationValueError, operation
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files

_FETCH = ("import sys,shutil,urllib.request as u;"
          "shutil.copyfileobj(u.urlopen(sys.argv[1],timeout=120),open(sys.argv[2],'wb'))")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@operation()
def fetched(src: str, dest: str, sha256: str, mode: str = "644") -> Generator:
    """Make `dest` the artifact at `src` (path on the controller, or http(s) URL)."""
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise OperationValueError(f"{src}: sha256 must be 64 hex digits")
    if host.get_fact(Sha256File, path=dest) == sha256:
        host.noop(f"{dest} already has sha256 {sha256[:12]}")
        return
    if src.startswith(("http://", "https://")):
        part = shlex.quote(dest + ".part")
        yield (f"mkdir -p {shlex.quote(str(Path(dest).parent))} && "
               f"python3 -c {shlex.quote(_FETCH)} {shlex.quote(src)} {part} && "
               f"echo {sha256}'  '{part} | sha256sum -c --quiet && "
               f"chmod {mode} {part} && mv {part} {shlex.quote(dest)}")
        return
    local = Path(src)
    if not local.is_file():
        raise OperationValueError(f"{src}: artifact not found (give a path or an http(s) URL)")
    actual = file_sha256(local)
    if actual != sha256:
        raise OperationValueError(f"{src}: sha256 is {actual}, expected {sha256}")
    yield from files.put._inner(src=str(local), dest=dest, mode=mode, create_remote_dir=True)
