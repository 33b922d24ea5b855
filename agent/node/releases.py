"""Release artifacts on disk: pack a wheelhouse into one, check one, keep the ones held.

The format and its rules are in agent/trust/release.py (pure); this module reads and
writes the tar. A tar is deterministic (sorted members, mtime 0, owner root, mode 0644),
so the same wheels always make the same artifact and the same SHA-256: the name of a
release is its content.

A node keeps the artifacts it holds in DATA/releases/<sha256>.tar; each was hashed and
checked against its manifest before it took that name, and the node serves them to
peers (`GET /api/v1/release/<sha256>`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from agent.errors import DataError, StorageError
from agent.statefile import storage_error
from agent.trust.release import (
    MANIFEST,
    WHEELS,
    FileEntry,
    Manifest,
    check_member_name,
    check_members,
    check_sha256,
    check_version,
    is_sha256,
    make_manifest,
)

MAX_ARTIFACT_BYTES = 512 << 20  # a wheelhouse is 30-60 MB; more is refused while it streams


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def pack(wheelhouse: Path, out_dir: Path) -> tuple[Path, str, Manifest]:
    """Write `mycelium-VERSION-SHA12.tar` from the wheels in `wheelhouse` into `out_dir`;
    (path, sha256, manifest)."""
    wheels = sorted(Path(wheelhouse).glob("*.whl"))
    if not wheels:
        raise DataError(f"no wheels in {wheelhouse}")
    files = {f"{WHEELS}{w.name}": FileEntry(file_sha256(w), w.stat().st_size) for w in wheels}
    manifest = make_manifest(files)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".release.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                    format=tarfile.GNU_FORMAT) as t:
            data = manifest.to_bytes()
            t.addfile(_info(MANIFEST, len(data)), io.BytesIO(data))
            for w in wheels:
                with w.open("rb") as src:
                    t.addfile(_info(f"{WHEELS}{w.name}", w.stat().st_size), src)
        sha = file_sha256(Path(tmp))
        final = out_dir / f"{manifest.name}-{manifest.version}-{sha[:12]}.tar"
        os.chmod(tmp, 0o644)  # public: its hash, not its secrecy, protects it
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final, sha, manifest


def read_manifest(path: Path) -> Manifest:
    """The manifest of an artifact, checked against every member's size and hash."""
    try:
        with tarfile.open(path, mode="r:") as t:
            first = t.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise DataError(f"{path}: the first member is not {MANIFEST}")
            manifest = Manifest.from_bytes(_read(t, first))
            found: dict[str, FileEntry] = {}
            for m in t:  # iterates from the first member again
                if m is first:
                    continue
                check_member_name(m.name)
                if not m.isfile():
                    raise DataError(f"{path}: member {m.name} is not a regular file")
                if m.name in found:
                    raise DataError(f"{path}: member {m.name} appears twice")
                f = t.extractfile(m)
                assert f is not None
                found[m.name] = FileEntry(hashlib.file_digest(f, "sha256").hexdigest(), m.size)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"{path} is not a readable release tar: {e}") from e
    check_members(manifest, found)
    return manifest


def _read(t: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    from agent.trust.release import MAX_MANIFEST_BYTES

    if m.size > MAX_MANIFEST_BYTES:
        raise DataError(f"{MANIFEST} is {m.size} bytes, over {MAX_MANIFEST_BYTES}")
    f = t.extractfile(m)
    assert f is not None
    return f.read()


def verify(path: Path, sha256: str, version: str | None, source: str) -> Manifest:
    """The artifact is the one named (hash first, then manifest and members)."""
    check_sha256(file_sha256(path), sha256, source)
    manifest = read_manifest(path)
    if version is not None:
        check_version(manifest, version)
    return manifest


def extract_wheels(path: Path, manifest: Manifest, dest: Path) -> None:
    """The manifest's wheels into `dest` (plain file names only, never tar paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="r:") as t:
        for m in t:
            if m.name in manifest.files:
                f = t.extractfile(m)
                assert f is not None
                with open(dest / m.name[len(WHEELS):], "wb") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)


class ReleaseStore:
    """DATA/releases: artifacts this node holds, each named by its SHA-256."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, sha256: str) -> Path | None:
        p = self.path / f"{sha256}.tar"
        return p if is_sha256(sha256) and p.is_file() else None

    def held(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name[:-4] for p in self.path.glob("*.tar") if is_sha256(p.name[:-4]))

    def incoming(self) -> Path:
        """A fresh temp file in the store (same file system: admitted by rename)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.path)
        except OSError as e:
            raise storage_error(e, self.path) from e
        os.close(fd)
        return Path(tmp)

    def admit(self, tmp: Path, sha256: str, version: str | None, source: str) -> Manifest:
        """Check `tmp` and give it its name; a bad one is deleted and DataError raised."""
        try:
            manifest = verify(tmp, sha256, version, source)
            os.replace(tmp, self.path / f"{sha256}.tar")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise storage_error(e, self.path) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return manifest

    def add(self, artifact: Path, sha256: str | None = None) -> tuple[str, Manifest]:
        """Copy an artifact file in (operator seeding a node): checked like a download."""
        sha = sha256 or file_sha256(artifact)
        tmp = self.incoming()
        try:
            with open(artifact, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot copy {artifact}: {e.strerror}") from e
        return sha, self.admit(tmp, sha, None, str(artifact))

    def prune(self, keep: set[str]) -> None:
        for sha in self.held():
            if sha not in keep:
                (self.path / f"{sha}.tar").unlink(missing_ok=True)
