"""The first-boot script (configs/templates/mycelium-firstboot.sh.j2), rendered as the image
build renders it, and its data-dir move run for real against temporary directories.

vfat has no permission bits: every file on the boot partition reads as 0755. What the script
moves off it into the data dir must come out 0600 (directories 0700), not executable.
Only the move block runs here: the rest of the script changes the host (hostname, /etc).
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import jinja2

TEMPLATE = Path(__file__).resolve().parent.parent / "configs/templates/mycelium-firstboot.sh.j2"


def _render(boot: Path, data: Path) -> str:
    return jinja2.Template(TEMPLATE.read_text()).render(boot_mount=str(boot),
                                                        data_dir=str(data), port=7946)


def _data_block(script: str) -> str:
    """The `if [ -d "$CFG/data" ]; then ... fi` block: the move of the bootstrap data dir."""
    lines = script.splitlines()
    start = lines.index('if [ -d "$CFG/data" ]; then')
    end = lines.index("fi", start)
    return "\n".join(lines[start:end + 1])


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_moved_data_files_are_0600_and_directories_0700(tmp_path):
    boot, data = tmp_path / "boot", tmp_path / "var/lib/mycelium"
    src = boot / "mycelium/data"
    (src / "raft").mkdir(parents=True)
    for f in (src / "identity.json", src / "ca.key", src / "raft/journal"):
        f.write_text("x\n")
        f.chmod(0o755)  # what vfat shows
    (src / "raft").chmod(0o755)
    data.mkdir(parents=True)
    data.chmod(0o700)
    script = _render(boot, data)
    prelude = f'CFG={boot}/mycelium\nDATA={data}\nlog() {{ echo "$*"; }}\n'
    r = subprocess.run(["sh", "-eu", "-c", prelude + _data_block(script)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "bootstrap data moved" in r.stdout
    assert not src.exists()  # off the FAT, which any machine can read
    assert _mode(data) == 0o700
    assert _mode(data / "raft") == 0o700
    for f in ("identity.json", "ca.key", "raft/journal"):
        assert (data / f).read_text() == "x\n"
        assert _mode(data / f) == 0o600, f


def test_the_script_keeps_the_data_dir_0700_and_installs_with_modes(tmp_path):
    script = _render(Path("/boot/efi"), Path("/var/lib/mycelium"))
    assert "CFG=/boot/efi/mycelium" in script and "DATA=/var/lib/mycelium" in script
    assert 'chmod 700 "$DATA"' in script
    assert 'install -m 644 "$CFG/spore.json"' in script
    assert 'install -m 600 "$CFG/token"' in script
    assert "-type f -exec chmod 600" in _data_block(script)
