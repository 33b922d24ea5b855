"""`build.py personalise`: a generic image gets its mycelium/ folder after it is built.

Tiny GPT and MBR images are made with image/disk.py (no rootfs, no root needed), then
personalised through build.py's command line, and read back with mtools at the FAT
partition's offset. The root partition must come out byte for byte unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import build
from image import disk
from image.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("net") / "net"
    subprocess.run([sys.executable, "-m", "agent.cli", "init", "--network-name", "pers",
                    "--dir", str(d)], check=True, capture_output=True, cwd=ROOT)
    return d


def _image(d: Path, label: str) -> Path:
    """A generic image: boot partition without mycelium/, a small ext4 root."""
    tree = d / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("mycelium\n")
    efi = d / "BOOTX64.EFI"
    efi.write_bytes(b"MZ" + b"\0" * 4000)
    boot = disk.make_vfat({"EFI/BOOT/BOOTX64.EFI": efi}, d / "boot.vfat", 8, "MYCBOOT")
    root = disk.make_ext4(tree, d / "root.ext4", disk.ext4_size_mb(tree, extra_mb=4))
    if label == "gpt":
        return disk.assemble_gpt(d / "generic.img", boot, root)
    return disk.assemble_mbr(d / "generic.img", boot, root)


def _root_bytes(img: Path) -> bytes:
    last = disk.partitions(img)[-1]
    with img.open("rb") as f:
        f.seek(last["start"] * disk.SECTOR)
        return f.read(last["size"] * disk.SECTOR)


def _read(img: Path, path: str) -> bytes:
    return disk.fat_read(img, path, disk.fat_partition_offset(img))


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_personalise_writes_the_folder_into_the_fat_partition(tmp_path, net, label, capsys):
    img = _image(tmp_path, label)
    root_before = _root_bytes(img)
    rc = build.main(["personalise", str(img), "--network", str(net), "--node-name", "n2",
                     "--join", "10.0.0.1:7946", "--listen", "10.0.0.2:7946"])
    assert rc == 0, capsys.readouterr().err
    assert _read(img, "mycelium/node-name") == b"n2\n"
    assert _read(img, "mycelium/join") == b"10.0.0.1:7946\n"
    assert _read(img, "mycelium/advertise") == b"10.0.0.2:7946\n"
    assert _read(img, "mycelium/root.json") == (net / "root.json").read_bytes()
    assert _read(img, "mycelium/spore.json") == (net / "spore.json").read_bytes()
    assert _read(img, "mycelium/token").strip()
    assert _read(img, "EFI/BOOT/BOOTX64.EFI").startswith(b"MZ")  # the rest is untouched
    assert _root_bytes(img) == root_before


def test_personalising_again_replaces_the_folder(tmp_path, net, capsys):
    img = _image(tmp_path, "gpt")
    assert build.main(["personalise", str(img), "--network", str(net),
                       "--node-name", "n2"]) == 0
    rc = build.main(["personalise", str(img), "--network", str(net), "--node-name", "n1",
                     "--first-node", "--listen", "10.0.0.1:7946"])
    assert rc == 0, capsys.readouterr().err
    assert _read(img, "mycelium/node-name") == b"n1\n"
    assert b"n1" in _read(img, "mycelium/data/identity.json")
    with pytest.raises(BuildError, match="token from the FAT filesystem of .*: mtype failed"):
        _read(img, "mycelium/token")  # a first node carries data/, not a token


def test_folder_mode_writes_the_same_files(tmp_path, net):
    assert build.main(["personalise", "--folder", str(tmp_path / "out"), "--network", str(net),
                       "--node-name", "n3"]) == 0
    folder = tmp_path / "out/mycelium"
    assert (folder / "node-name").read_text() == "n3\n"
    assert (folder / "root.json").read_bytes() == (net / "root.json").read_bytes()
    assert {p.name for p in folder.iterdir()} == {"node-name", "root.json", "spore.json",
                                                  "token"}


@pytest.mark.parametrize(("args", "message"), [
    (["IMG.xz"], "is compressed: decompress it first"),
    (["missing.img"], "no such image"),
    (["ROOT"], "has no FAT boot partition"),
    (["IMG", "--first-node"], "--first-node needs --node-name and --listen"),
    (["IMG", "--network-config", "x.conf"], "must end in .network"),
])
def test_errors_are_one_line(tmp_path, net, capsys, args, message):
    img = _image(tmp_path, "gpt")
    root_only = disk.assemble(tmp_path / "root-only.img", disk.Layout.plan(
        "gpt", [disk.Part(tmp_path / "root.ext4", "linux")]))
    (tmp_path / "generic.img.xz").write_bytes(b"")
    subst = {"IMG": str(img), "IMG.xz": str(img) + ".xz", "ROOT": str(root_only),
             "missing.img": str(tmp_path / "missing.img")}
    argv = [subst.get(a, a) for a in args]
    assert build.main(["personalise", *argv, "--network", str(net)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_not_a_network_dir_names_the_fix(tmp_path, capsys):
    img = _image(tmp_path, "gpt")
    assert build.main(["personalise", str(img), "--network", str(tmp_path)]) == 1
    assert "mycelium init" in capsys.readouterr().err


def test_image_or_folder_is_required(net):
    with pytest.raises(SystemExit):
        build.main(["personalise", "--network", str(net)])


def test_image_build_checks_arguments_before_any_work(tmp_path, net):
    """`build.py --first-node` without --listen used to fail after 38 s of bootstrap."""
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "build.py", "--board", "x86", "--network", str(net),
                        "--first-node", "--node-name", "n1", "--out", str(out)],
                       capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert r.returncode == 1, r
    err = r.stderr.strip()
    assert err.startswith("build.py: --first-node needs --listen HOST:PORT"), err
    assert "10.0.2.15:7946" in err and "\n" not in err, err
    assert r.stdout == "" and not out.exists()  # no step announced, nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--first-node"], "--first-node needs --node-name and --listen HOST:PORT"),
    (["--listen", "10.0.0.1"], "--listen '10.0.0.1': give HOST:PORT"),
    (["--join", "host"], "--join 'host': give HOST:PORT"),
    (["--k3s-artifact", "https://example.invalid/k3s"], "needs --k3s-sha256"),
    (["--k3s-artifact", "missing-k3s"], "K3s artifact not found"),
    (["--k3s-artifact", "https://example.invalid/k3s", "--k3s-sha256", "ab"],
     "must be 64 hex digits"),
    (["--k3s-sha256", "a" * 64], "add --k3s-artifact"),
    (["--no-network", "--first-node"], "add --network DIR"),
    (["--preinstall", "docker"], "--preinstall docker: not a component; choose from podman, qemu"),
])
def test_image_build_refuses_bad_arguments_in_one_line(tmp_path, net, capsys, monkeypatch,
                                                       args, message):
    import image.build

    def no_work(ctx):
        raise AssertionError("the build started")

    monkeypatch.setattr(image.build, "bootstrap_rootfs", no_work)
    monkeypatch.setattr(image.build, "fetch_artifacts", no_work)
    argv = args[1:] if args[0] == "--no-network" else ["--network", str(net), *args]
    assert build.main(["--board", "x86", "--out", str(tmp_path / "dist"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_preinstall_adds_the_components_packages_to_the_rootfs():
    """Baked-in packages are the ones the recipes install, so a node's first apply finds
    them and runs no `apt-get update` (recipes/deploys.py `_packages`)."""
    from image.boards import get_board
    from image.build import preinstall_packages
    from recipes.params import PODMAN_PACKAGES, VmRuntimeParams

    board = get_board("x86")
    plain = board.rootfs_spec()
    baked = board.rootfs_spec(preinstall_packages(("podman", "qemu", "podman")))
    assert set(baked.packages) - set(plain.packages) == {*PODMAN_PACKAGES,
                                                        *VmRuntimeParams().packages}
    assert baked.key() != plain.key()  # its own cached bootstrap
