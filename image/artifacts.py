"""Artifacts baked into an image (the K3s binary), checked by SHA-256 before they go in.

A path is hashed here (and checked against --k3s-sha256 when one is given); a URL needs
its published SHA-256 and is downloaded once into the cache ($MYCELIUM_CACHE/artifacts,
named by hash), so a warm rebuild does not download again. The file then goes into the
rootfs through recipes/artifact.py's `fetched`, the operation a node runs for the same
binary: a node whose network.yaml names the same SHA-256 finds it in place and skips the
download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import TransportError
from agent.statefile import fetch_checked
from image.errors import BuildError
from image.rootfs import cache_dir
from recipes.artifact import file_sha256

TIMEOUT_S = 120


@dataclass(frozen=True)
class Artifact:
    source: str  # what the operator gave: a path or an http(s) URL
    local: Path  # the checked file on this machine
    sha256: str


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def _normalise(sha256: str, src: str) -> str:
    sha = sha256.strip().lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise BuildError(f"{src}: --k3s-sha256 must be 64 hex digits, got {sha256!r}")
    return sha


def check(src: str, sha256: str = "") -> str:
    """The arguments alone (no hashing, no download): the normalised SHA-256, or BuildError."""
    sha = _normalise(sha256, src)
    if _is_url(src):
        if not sha:
            raise BuildError(f"{src}: a URL artifact needs --k3s-sha256 (its published "
                             "SHA-256), so a wrong download never goes into the image")
    elif not Path(src).is_file():
        raise BuildError(f"{src}: K3s artifact not found; give a file path or an http(s) URL")
    return sha


def resolve(src: str, sha256: str = "") -> Artifact:
    """The checked local file for `src`; raises BuildError on a missing file or bad hash."""
    sha = check(src, sha256)
    if _is_url(src):
        return Artifact(src, _download(src, sha), sha)
    local = Path(src)
    actual = file_sha256(local)
    if sha and actual != sha:
        raise BuildError(f"{src}: sha256 is {actual}, expected {sha}; check --k3s-sha256")
    return Artifact(src, local.resolve(), actual)


def _download(url: str, sha: str) -> Path:
    cached = cache_dir().parent / "artifacts" / sha
    if cached.is_file() and file_sha256(cached) == sha:
        return cached
    try:
        actual = fetch_checked(url, sha, cached, TIMEOUT_S)
    except TransportError as e:
        raise BuildError(f"{e}; check the URL or give a local path") from e
    if actual != sha:
        raise BuildError(f"{url}: downloaded sha256 is {actual}, expected {sha}; check "
                         "--k3s-sha256 and the URL")
    return cached
