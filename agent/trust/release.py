"""Release artifacts: the manifest and the checks a node makes before using one. Pure.

A release is one tar file: `manifest.json` first, then `wheels/*.whl` (the agent's wheel
and every dependency's, what `pip install --no-index --find-links` needs). It is named by
the SHA-256 of the whole tar, which `network.yaml` (`release: {version, sha256}`) carries
under the root signature, so a node can take the bytes from anyone: it hashes them first.

Rules (each a `DataError` naming what is wrong):
- the artifact's SHA-256 is the one the state names (checked while it streams in, by the
  caller; `check_sha256` here);
- the manifest is format 1, names exactly the files the tar holds, each with its size and
  SHA-256, and holds exactly one `mycelium` wheel whose version is the manifest's version;
- that version is the one the state names;
- no member name escapes `wheels/` (no `..`, no absolute path, no link).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.errors import DataError

MANIFEST = "manifest.json"
WHEELS = "wheels/"
FORMAT = 1
AGENT_DIST = "mycelium"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 500
_SHA = re.compile(r"^[0-9a-f]{64}$")
# name-version(-build)?-python-abi-platform.whl (PEP 427); names use _ for -
_WHEEL = re.compile(r"^(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)"
                    r"(-(?P<build>\d[A-Za-z0-9_]*))?-(?P<python>[A-Za-z0-9_.]+)"
                    r"-(?P<abi>[A-Za-z0-9_.]+)-(?P<platform>[A-Za-z0-9_.]+)\.whl$")
_ARCHES = ("x86_64", "aarch64", "armv7l", "i686", "ppc64le", "s390x", "riscv64")


def is_sha256(v: object) -> bool:
    return isinstance(v, str) and bool(_SHA.match(v))


@dataclass(frozen=True)
class WheelName:
    dist: str
    version: str
    python: tuple[str, ...]  # cp311, py3, ...
    platforms: tuple[str, ...]  # any, manylinux_2_17_x86_64, ...

    @classmethod
    def parse(cls, filename: str) -> WheelName:
        m = _WHEEL.match(filename)
        if not m:
            raise DataError(f"{filename!r} is not a wheel file name (name-version-python-abi-"
                            "platform.whl)")
        return cls(m["dist"].lower().replace(".", "_"), m["version"],
                   tuple(m["python"].split(".")), tuple(m["platform"].split(".")))

    @property
    def architectures(self) -> tuple[str, ...]:
        """Machine names the wheel runs on: ("any",) for pure Python."""
        if self.platforms == ("any",):
            return ("any",)
        return tuple(sorted({a for p in self.platforms for a in _ARCHES if p.endswith(a)}))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a release holds. Unknown fields are kept, so a round trip loses nothing."""

    version: str
    files: dict[str, FileEntry]
    python: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    name: str = AGENT_DIST
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "format": FORMAT, "name": self.name, "version": self.version,
                "python": list(self.python), "architectures": list(self.architectures),
                "files": {n: {"sha256": e.sha256, "size": e.size}
                          for n, e in sorted(self.files.items())}}

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise DataError(f"release manifest is {len(data)} bytes, over "
                            f"{MAX_MANIFEST_BYTES}")
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"release manifest is not JSON: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise DataError("release manifest must be a JSON object")
        if d.get("format") != FORMAT:
            raise DataError(f"release manifest format {d.get('format')!r}; this agent reads "
                            f"format {FORMAT}")
        version, files = d.get("version"), d.get("files")
        if not isinstance(version, str) or not version:
            raise DataError("release manifest has no version")
        if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
            raise DataError(f"release manifest must list 1 to {MAX_FILES} files")
        entries = {}
        for name, e in files.items():
            check_member_name(name)
            if not (isinstance(e, dict) and is_sha256(e.get("sha256"))
                    and isinstance(e.get("size"), int) and not isinstance(e["size"], bool)
                    and e["size"] >= 0):
                raise DataError(f"release manifest: {name}: needs sha256 (64 hex digits) and "
                                "size")
            entries[name] = FileEntry(e["sha256"], e["size"])
        known = {"format", "name", "version", "python", "architectures", "files"}
        m = cls(version, entries, _strs(d.get("python")), _strs(d.get("architectures")),
                str(d.get("name") or AGENT_DIST), {k: v for k, v in d.items() if k not in known})
        agent_wheel(m)  # exactly one agent wheel, of the manifest's version
        return m


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()


def check_member_name(name: object) -> None:
    """A member is `wheels/NAME.whl` with a plain file name: nothing lands outside."""
    if not (isinstance(name, str) and name.startswith(WHEELS) and name.endswith(".whl")
            and "/" not in name[len(WHEELS):] and name[len(WHEELS):] not in ("", ".", "..")
            and "\\" not in name and "\0" not in name):
        raise DataError(f"release member {name!r} is not wheels/NAME.whl")


def agent_wheel(m: Manifest) -> str:
    """The member name of the agent's own wheel; DataError unless there is exactly one and
    its version is the manifest's."""
    own = [n for n in m.files if WheelName.parse(n[len(WHEELS):]).dist == AGENT_DIST]
    if len(own) != 1:
        raise DataError(f"a release holds exactly one {AGENT_DIST} wheel, this one {len(own)}")
    wv = WheelName.parse(own[0][len(WHEELS):]).version
    if wv != m.version:
        raise DataError(f"release manifest says version {m.version} but its "
                        f"{AGENT_DIST} wheel is {wv}")
    return own[0]


def make_manifest(files: dict[str, FileEntry], extra: dict[str, Any] | None = None) -> Manifest:
    """The manifest for these `wheels/` members: version from the agent's wheel, Python
    tags and architectures from every wheel's name."""
    for n in files:
        check_member_name(n)
    wheels = [WheelName.parse(n[len(WHEELS):]) for n in files]
    own = [w for w in wheels if w.dist == AGENT_DIST]
    if len(own) != 1:
        raise DataError(f"the wheelhouse must hold exactly one {AGENT_DIST} wheel, it holds "
                        f"{len(own)}")
    arches = sorted({a for w in wheels for a in w.architectures} - {"any"}) or ["any"]
    m = Manifest(own[0].version, dict(files), tuple(sorted({p for w in wheels
                                                            for p in w.python})),
                 tuple(arches), extra=dict(extra or {}))
    agent_wheel(m)
    return m


def check_members(m: Manifest, found: dict[str, FileEntry]) -> None:
    """The tar's wheels are exactly the manifest's, each of its size and hash."""
    missing = sorted(set(m.files) - set(found))
    extra = sorted(set(found) - set(m.files))
    if missing or extra:
        raise DataError("release members do not match its manifest: "
                        + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                    + ([f"not listed {', '.join(extra)}"] if extra else [])))
    for name, want in sorted(m.files.items()):
        got = found[name]
        if got != want:
            raise DataError(f"release member {name}: sha256 {got.sha256[:12]}... size "
                            f"{got.size}, manifest says {want.sha256[:12]}... size {want.size}")


def check_sha256(got: str, want: str, source: str) -> None:
    if got != want:
        raise DataError(f"release from {source} has sha256 {got[:16]}..., network.yaml names "
                        f"{want[:16]}...: refused")


def check_version(m: Manifest, want: str) -> None:
    if m.version != want:
        raise DataError(f"release holds {AGENT_DIST} {m.version}, network.yaml names {want}")


def runs_on(m: Manifest, machine: str) -> bool:
    """Whether a node of this machine type (platform.machine()) can install it."""
    return "any" in m.architectures or machine in m.architectures


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
