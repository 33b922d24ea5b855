"""Real wheels made in a test, without a build backend or a package index.

`make_wheel` writes a PEP 427 wheel (dist-info with METADATA, WHEEL, RECORD and entry
points) that pip installs like any other. `agent_wheel` packs this checkout's agent
packages under any version, optionally with an agent that crashes at start, so release
tests can roll versions forward and back in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "recipes", "configs", "tui", "image")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def make_wheel(out: Path, dist: str, version: str, files: dict[str, bytes],
               requires: tuple[str, ...] = (), scripts: dict[str, str] | None = None,
               tag: str = "py3-none-any") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"]
    meta += [f"Requires-Dist: {r}\n" for r in requires]
    extra = {f"{info}/METADATA": "".join(meta).encode(),
             f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: mycelium-tests\n"
                               f"Root-Is-Purelib: true\nTag: {tag}\n").encode()}
    if scripts:
        extra[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()
    allfiles = {**files, **extra}
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in sorted(allfiles.items()))
    record += f"{info}/RECORD,,\n"
    path = out / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in sorted(allfiles.items()):
            zi = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, d)
        z.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)), record)
    return path


def agent_wheel(out: Path, version: str, crash: bool = False) -> Path:
    """This checkout's packages as mycelium VERSION. `crash`: the `mycelium agent run`
    of this wheel exits at once with an error, as a broken release would."""
    files: dict[str, bytes] = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".pyc"):
                files[str(f.relative_to(ROOT))] = f.read_bytes()
    if crash:
        cli = files["agent/cli/__init__.py"].decode()
        files["agent/cli/__init__.py"] = cli.replace(
            "def main(argv: list[str] | None = None) -> int:\n",
            "def main(argv: list[str] | None = None) -> int:\n"
            "    if (argv or sys.argv[1:])[:2] == ['agent', 'run']:\n"
            "        raise SystemExit('this release is broken on purpose')\n", 1).encode()
        assert b"broken on purpose" in files["agent/cli/__init__.py"]
    return make_wheel(out, "mycelium", version, files, scripts={"mycelium": "agent.cli:main"})
