"""Base images and per-VM overlays on the node.

- A base image given by URL is downloaded once into the node's shared image cache (data
  dir/vm-images, named by its SHA-256), checked against that hash before it is kept, and
  shared by every VM that names the same hash.
- A base image given by path is hashed before each start when network.yaml gives a
  SHA-256 (the result is remembered per path, size and mtime, so an unchanged file is
  hashed once per agent run). A mismatch is a VmError: that VM is never started.
- Each VM boots from its own qcow2 overlay over the base (data dir/vms/NAME): the base is
  never written. The overlay records which base it sits on; a new base gets a new overlay
  (the old one is kept beside it as overlay.qcow2.old), and a moved VM keeps its overlay
  until the placement says otherwise (issue 15 ships its state).
- Disk replication (diskckpt.py) runs the VM on checkpoint layers over its overlay; a
  QEMU that exits leaves the newest of them holding the last writes. Before the next
  start they are committed into the overlay (`fold_layers`), so a restart loses nothing.
Blocking work (hashing, downloads, qemu-img) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

from agent.errors import VmError
from agent.node.vm.spec import VmPaths, VmSpec
from agent.statefile import fetch_checked

DOWNLOAD_TIMEOUT_S = 300.0
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checked_path(src: str, want: str) -> Path:
    p = Path(src)
    try:
        st = p.stat()
    except OSError as e:
        raise VmError(f"image {src}: {e.strerror}") from e
    if not want:
        return p
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    got = _verified.get(key) or sha256_of(p)
    if got != want:
        raise VmError(f"image {src}: sha256 is {got}, network.yaml says {want}; not started")
    _verified[key] = got
    return p


def _download(url: str, want: str, cache: Path) -> Path:
    cached = cache / want
    if cached.is_file():
        return cached  # kept only after its hash matched
    got = fetch_checked(url, want, cached, DOWNLOAD_TIMEOUT_S)
    if got != want:
        raise VmError(f"image {url}: downloaded sha256 is {got}, network.yaml says {want}; "
                      "not started")
    return cached


def base_image(spec: VmSpec, cache: Path) -> Path | None:
    """The checked local base image of `spec` (None: a diskless direct-boot VM)."""
    for what, src in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        if src and not os.access(src, os.R_OK):
            raise VmError(f"{what} {src}: not a readable file on this node")
    if not spec.image:
        return None
    if is_url(spec.image):
        if not spec.image_sha256:
            raise VmError(f"image {spec.image}: a URL needs image_sha256")
        return _download(spec.image, spec.image_sha256, cache)
    return _checked_path(spec.image, spec.image_sha256)


def _qemu_img(*args: str) -> str:
    try:
        r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VmError(f"qemu-img {args[0]}: {e}") from e
    if r.returncode:
        raise VmError(f"qemu-img {' '.join(args)}: {r.stderr.strip()[-300:]}")
    return r.stdout


def image_format(path: Path) -> str:
    info = json.loads(_qemu_img("info", "--output=json", str(path)))
    return str(info.get("format", "raw"))


def fold_layers(paths: VmPaths) -> None:
    """Commit the checkpoint layers a QEMU left over the overlay into it, then delete
    every layer (those over another disk, resume.qcow2, are rebuilt at a resume)."""
    layers = list(paths.dir.glob("layer-*.qcow2"))
    tops = []
    for layer in layers:
        try:
            info = json.loads(_qemu_img("info", "--output=json", "--backing-chain",
                                        str(layer)))
        except VmError:  # its backing file went (a fold that completed): a leftover
            continue
        chain = [Path(str(i.get("filename", ""))).resolve() for i in info]
        if paths.overlay.resolve() in chain:  # the top was written last (a layer left
            tops.append((layer.stat().st_mtime_ns, layer))  # by a fold is older)
    if tops:
        _qemu_img("commit", "-q", "-b", str(paths.overlay), str(max(tops)[1]))
    for layer in layers:
        layer.unlink(missing_ok=True)


def overlay(base: Path, paths: VmPaths) -> Path:
    """This VM's qcow2 overlay over `base`, made when missing or when the base changed."""
    marker = paths.dir / "overlay.base"
    want = str(base.resolve())
    if paths.overlay.is_file() and marker.is_file() and marker.read_text() == want:
        fold_layers(paths)
        return paths.overlay
    if paths.overlay.is_file():
        paths.overlay.replace(paths.overlay.with_name("overlay.qcow2.old"))
    _qemu_img("create", "-q", "-f", "qcow2", "-F", image_format(Path(want)), "-b", want,
              str(paths.overlay))
    marker.write_text(want)
    return paths.overlay


def overlay_base(paths: VmPaths) -> Path | None:
    """The base image the VM's overlay sits on (what a resumed disk goes over)."""
    marker = paths.dir / "overlay.base"
    return Path(marker.read_text()) if marker.is_file() else None


async def prepare_disk(spec: VmSpec, paths: VmPaths, cache: Path) -> Path | None:
    """The overlay to boot `spec` from, after its base passed the checks (or None)."""
    def work() -> Path | None:
        paths.dir.mkdir(parents=True, exist_ok=True)
        base = base_image(spec, cache)
        return overlay(base, paths) if base is not None else None

    return await asyncio.to_thread(work)
