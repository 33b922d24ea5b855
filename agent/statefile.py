"""Crash-safe files: write temp, fsync, rename, fsync the directory.

After `atomic_write` returns, a crash or power cut leaves either the old file or the new
one, never a torn mix. `VersionStore` keeps the highest accepted state version this way,
so a replayed older envelope is still refused after a restart.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agent.errors import DataError, TransportError


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_root_chain(directory: Path) -> list[bytes]:
    """`1.root.json` ... `N.root.json` in version order (empty if there are none)."""
    files = sorted(Path(directory).glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    return [p.read_bytes() for p in files]


def read_input(path: Path | str, what: str) -> bytes:
    """An operator-named input file, or a one-line TransportError saying why not."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TransportError(f"cannot read {what} {path}: {e.strerror}") from e


class VersionStore:
    """Highest accepted version (and its envelope) in a directory."""

    VERSION = "accepted-version"
    ENVELOPE = "accepted-envelope.json"

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def version(self) -> int:
        p = self.dir / self.VERSION
        if not p.exists():
            return 0
        text = p.read_text().strip()
        if not text.isdigit():
            raise DataError(f"{p} is corrupt ({text[:20]!r}); restore it or remove the "
                            "data directory to start over")
        return int(text)

    def envelope(self) -> bytes | None:
        p = self.dir / self.ENVELOPE
        return p.read_bytes() if p.exists() else None

    def record(self, version: int, envelope: bytes | None = None) -> None:
        """Envelope first, then version: a crash between them never lowers the version."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if version <= self.version():
            raise DataError(f"version {version} is not above recorded {self.version()}")
        if envelope is not None:
            atomic_write(self.dir / self.ENVELOPE, envelope)
        atomic_write(self.dir / self.VERSION, f"{version}\n".encode())
