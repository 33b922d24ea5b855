"""Crash-safe files: write temp, fsync, rename, fsync the directory.

After `atomic_write` returns, a crash or power cut leaves either the old file or the new
one, never a torn mix. `VersionStore` keeps the highest accepted state version this way,
so a replayed older envelope is still refused after a restart.

A write the disk refuses (full, quota, read-only, I/O error) leaves the old file as it
was and raises `StorageError`, one line naming the cause, the directory and the fix.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from agent.errors import DataError, StorageError, TransportError

_FIX = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
        errno.EROFS: "remount it read-write", errno.EIO: "check the disk"}


def storage_error(e: OSError, directory: Path) -> StorageError:
    """`no space left on device in /var/lib/mycelium/state (free some space)`."""
    cause = (e.strerror or str(e)).lower()
    fix = _FIX.get(e.errno or 0)
    return StorageError(f"{cause} in {directory}" + (f" ({fix})" if fix else ""), e.errno)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    try:
        _replace(path, data, mode)
    except OSError as e:
        raise storage_error(e, path.parent) from e


def _replace(path: Path, data: bytes, mode: int) -> None:
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


def fetch_checked(url: str, sha256: str, dest: Path, timeout: float) -> str:
    """Download `url` next to `dest` and move it there only if its SHA-256 is `sha256`;
    the hash it had either way (a mismatch leaves nothing behind). TransportError names
    the URL when the download fails."""
    import hashlib
    import shutil
    import urllib.error
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, part.open("wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        with part.open("rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise TransportError(f"{url}: download failed ({e})") from e
    if got == sha256:
        part.rename(dest)
    else:
        part.unlink()
    return got


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

    @property
    def envelope_path(self) -> Path:
        return self.dir / self.ENVELOPE

    def envelope(self) -> bytes | None:
        p = self.envelope_path
        return p.read_bytes() if p.exists() else None

    def record(self, version: int, envelope: bytes | None = None, again: bool = False) -> None:
        """Envelope first, then version: a crash between them never lowers the version.
        `again`: the recorded version may be stored again (its envelope was lost)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.dir.parent) from e
        if version < self.version() + (0 if again else 1):
            raise DataError(f"version {version} is not above recorded {self.version()}")
        if envelope is not None:
            atomic_write(self.dir / self.ENVELOPE, envelope)
        atomic_write(self.dir / self.VERSION, f"{version}\n".encode())
