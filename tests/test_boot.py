"""Boot a built x86 image in QEMU (UEFI, TCG unless KVM really works) and check the node.

Marked `boot`: builds an image (the Debian bootstrap is cached; about 2 minutes cold) and
boots it (about 25 s to a login prompt under TCG, then first boot and the agent).
Run: `.venv/bin/python -m pytest -m boot tests/test_boot.py`.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import sys
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from image import disk
from image.qemu import Guest, SocketNet, free_port, mac
from support.boot import (
    READY,
    fill_section,
    grow,
    make_network,
    run,
    serial_on_failure,
    ssh_host,
)

pytestmark = pytest.mark.boot
ROOT = Path(__file__).resolve().parent.parent


def _build(d: Path, node: str, *args: str) -> Path:
    t0 = time.monotonic()
    out = run(sys.executable, str(ROOT / "build.py"), "--board", "x86", "--network",
               str(d / "net"), "--node-name", node, "--out", str(d / "dist"), "--no-xz",
               *args, cwd=ROOT)
    print(out.strip().splitlines()[-1], f"({time.monotonic() - t0:.0f} s)")
    return d / f"dist/mycelium-x86-{node}.img"


def _build_generic(d: Path, name: str, *args: str) -> Path:
    """An image with no network: what a download page would offer."""
    t0 = time.monotonic()
    out = run(sys.executable, str(ROOT / "build.py"), "--board", "x86", "--name", name,
               "--out", str(d / "dist"), "--no-xz", *args, cwd=ROOT)
    print(out.strip().splitlines()[-1], f"({time.monotonic() - t0:.0f} s)")
    return d / f"dist/{name}.img"


def _personalise(img: Path, net: Path, node: str, *args: str) -> None:
    """What an operator does after flashing: `build.py personalise` (mtools, no mount)."""
    print(run(sys.executable, str(ROOT / "build.py"), "personalise", str(img), "--network",
               str(net), "--node-name", node, *args, cwd=ROOT).strip())


def _fake_k3s(d: Path) -> tuple[Path, str]:
    """Random bytes standing in for the K3s binary (it cannot be downloaded here)."""
    f = d / "k3s"
    f.write_bytes(os.urandom(1 << 20))
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A network with one user (our SSH key), and the first node's image for it, with a
    K3s binary baked in."""
    d = tmp_path_factory.mktemp("boot")
    make_network(d, "  - {name: n1, role: sclerotium}")
    k3s, sha = _fake_k3s(d)
    img = _build(d, "n1", "--first-node", "--listen", "10.0.2.15:7946", "--k3s-artifact",
                 str(k3s))
    manifest = json.loads((d / "dist/mycelium-x86-n1.manifest.json").read_text())
    assert manifest["k3s"] == {"source": str(k3s), "path": "/usr/local/bin/k3s",
                               "sha256": sha}
    data, mode = disk.ext4_read(img, "/usr/local/bin/k3s", disk.root_partition_offset(img))
    assert hashlib.sha256(data).hexdigest() == sha and mode == 0o755
    print("image space (MB):", manifest["space"], manifest["partitions_mb"])
    size = img.stat().st_size
    grow(img, 512)
    return d, img, size, sha


def test_x86_image_boots_to_a_ready_agent_and_passes_node_checks(built):
    d, img, built_size, k3s_sha = built
    t0 = time.monotonic()
    with Guest(img, d, name="n1", memory_mb=1024) as g, serial_on_failure(g):
        g.wait_for(READY, timeout=420)
        ready_s = time.monotonic() - t0
        print(f"boot to agent ready: {ready_s:.0f} s")
        host = ssh_host(g, d / "id")
        assert host.service("mycelium-agent").is_running
        assert host.service("mycelium-agent").is_enabled
        # identity from the FAT mycelium/ folder
        assert host.check_output("hostname") == "n1"
        ident = host.file("/var/lib/mycelium/identity.json")
        assert '"name": "n1"' in ident.content_string.replace('":"', '": "')
        assert host.file("/var/lib/mycelium").mode == 0o700
        assert not host.file("/boot/efi/mycelium/data").exists  # CA key moved off the FAT
        # root partition grown to the medium
        root_bytes = int(host.check_output("lsblk -bno SIZE /dev/disk/by-label/root"))
        assert root_bytes > built_size, (root_bytes, built_size)
        # host keys made at this boot, not baked in
        key = host.file("/etc/ssh/ssh_host_ed25519_key.pub")
        assert key.exists
        boot_time = float(host.check_output("date +%s")) - float(
            host.check_output("cut -d' ' -f1 /proc/uptime"))
        assert key.mtime.timestamp() >= boot_time - 5
        assert host.file("/etc/machine-id").content_string.strip()
        assert host.file("/usr/local/bin/k3s").sha256sum == k3s_sha  # baked, not fetched
        assert not host.file("/opt/mycelium/wheels").exists  # the venv is installed
        assert "current ->" in host.check_output("mycelium release status")  # on PATH
        failed = host.check_output("systemctl --failed --no-legend --plain")
        assert failed == "", failed
        rss = int(host.check_output("ps -o rss= -C mycelium | sort -n | tail -1") or 0)
        print(f"agent RSS after boot: {rss / 1024:.0f} MB")
        # the console dashboard (issue 13) on the VT and on the serial console, whose
        # frames reach the serial log: its connection line names the node it reads
        for tty in ("tty1", "ttyS0"):
            assert host.service(f"mycelium-console@{tty}").is_enabled, tty
        g.wait_for(r"reading n1 at", timeout=300)
        for tty in ("tty1", "ttyS0"):
            assert host.service(f"mycelium-console@{tty}").is_running, tty
        print(f"console dashboard on serial: {time.monotonic() - t0:.0f} s after start")


def test_a_booted_node_takes_a_release_pushed_from_the_host(built, tmp_path):
    """Issue 17 on a real image: the host packs a release of this checkout, serves it over
    HTTP (the guest reaches the host at 10.0.2.2) and pushes a state naming it; the node
    fetches it from that url (no peer holds it), installs it into a new venv with pip from
    its wheels only, switches `current`, restarts its agent through the unit (exit 75),
    and the watchdog commits the switch once the new agent is healthy."""
    d, img, _, _ = built
    out = run(sys.executable, "-m", "agent.cli", "release", "create", "--out",
              str(tmp_path / "rel"), cwd=ROOT)
    sha = out.strip().splitlines()[-1]
    tar = next((tmp_path / "rel").glob("*.tar"))
    version = re.search(r"version: ([^,]+),", out)[1]  # type: ignore[index]
    state = (d / "net/network.yaml").read_text()
    with _serve(tmp_path / "rel") as port, \
            Guest(img, d, name="n1", memory_mb=1024, forward=[7946]) as g, \
            serial_on_failure(g):
        g.wait_for(READY, timeout=420)
        api = g.forwards[7946]
        t0 = time.monotonic()
        _push(d, api, state + f"release: {{version: {version}, sha256: {sha}, url: "
              f"http://10.0.2.2:{port}/{tar.name}}}\n")
        node = [sys.executable, "-m", "agent.cli", "status", "--to", f"127.0.0.1:{api}",
                "--network", str(d / "net"), "-o", "json"]

        def running() -> bool:
            members = json.loads(run(*node))
            return any(m["name"] == "n1" and (m.get("rel") or {}).get("run") == sha
                       for m in members)

        host = ssh_host(g, d / "id")
        _eventually(lambda: sha[:12] in host.check_output("readlink /opt/mycelium/current"),
                    600, "n1 switched to the release")
        print(f"installed and switched: {time.monotonic() - t0:.0f} s after the push")
        _eventually(lambda: '"pending"' not in host.check_output("mycelium release status"),
                    300, "the watchdog committed the switch")
        print(f"committed: {time.monotonic() - t0:.0f} s after the push")
        said = host.check_output("mycelium release status")
        print(said)
        assert '"rolled_back"' not in said and sha in said, said  # committed, not undone
        assert host.service("mycelium-agent").is_running
        prefix = host.check_output("readlink -f /opt/mycelium/current")
        assert sha in host.file(f"{prefix}/mycelium-release.json").content_string
        _eventually(running, 120, "n1 gossips that it runs the release")  # its sys.prefix


@contextmanager
def _serve(directory: Path):
    """A plain HTTP server for `directory` on all host addresses (QEMU's user network
    reaches the host at 10.0.2.2); yields its port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


MESH = "10.78.0"  # the guests' private link (a QEMU socket network on loopback)
PAGE = "hello from an endomycete"
FETCH = ("python3 -c \"import urllib.request as u; "
         "print(u.urlopen('http://127.0.0.1:8080/', timeout=10).read().decode())\"")
WEB = """    web:
      image: localhost/web:1
      replicas: 2
      ports: [{port: 8080}]
"""


def _mesh_file(d: Path, name: str, index: int) -> Path:
    f = d / f"10-mesh-{name}.network"
    f.write_text(f"[Match]\nMACAddress={mac(name, 1)}\n\n[Network]\nAddress={MESH}.{index}/24\n")
    return f


def _web_image(d: Path) -> Path:
    """A container image with no registry: busybox-static serving one page."""
    root = d / "webroot"
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "www/index.html").write_text(PAGE + "\n")
    tar = d / "web.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    return tar


def _push(d: Path, port: int, state: str) -> None:
    y = d / "net/network.yaml"
    y.write_text(state)
    run(sys.executable, "-m", "agent.cli", "push", str(y), "--to", f"127.0.0.1:{port}",
         "--network", str(d / "net"), "--timeout", "120")


def _eventually(check, timeout: float, what: str, every: float = 5.0):
    end = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# On demand (`-m "boot and slow"`), not in CI: on CI's two cores, two TCG guests took
# 800 s for their first apply (podman from apt) and missed this test's deadlines in three
# runs on 2026-12-02 (SWIM flapping at 200 ms rounds in two of them).
@pytest.mark.slow
def test_two_nodes_form_a_network_and_run_a_podman_service(tmp_path):
    """Two x86 images on a QEMU socket network: the second (a generic image personalised
    with `build.py personalise`) joins the first from the seed spore; a two-replica
    endomycete runs on both (podman installed on demand by the recipe), answers on its
    port, and is removed when deleted from the state."""
    if shutil.which("busybox") is None:
        pytest.skip("needs busybox-static on the host: sh .ci/install --test")
    d = tmp_path
    net, key = make_network(d, "  - {name: n1, role: sclerotium, runtime: podman}\n"
                           "  - {name: n2, role: rhizomorph, runtime: podman}")
    # One-second gossip rounds: two TCG guests on two host cores run tens of times slower
    # than hardware, and at 200 ms they flapped between suspect, dead and alive for the
    # whole test (the leader then kept n2 out of placements). The timeouts scale with the
    # round (agent/tuning.py), as they would for a network of slow boards.
    y = net / "network.yaml"
    text = y.read_text()
    assert "interval_ms: 200 " in text
    y.write_text(text.replace("interval_ms: 200 ", "interval_ms: 1000", 1))
    # No dashboards here (the single-node test checks them): two TCG guests on two host
    # cores are starved enough (a dashboard on ttyS0 used 112 s of CPU in its first 4 min).
    # podman baked in (`--preinstall podman`): installing it from apt inside two TCG
    # guests took 800 s of this test's first apply
    img1 = _build(d, "n1", "--first-node", "--listen", f"{MESH}.1:7946",
                  "--network-config", str(_mesh_file(d, "n1", 1)), "--no-dashboard",
                  "--preinstall", "podman")
    # n2 starts as a generic image, personalised after the build like a flashed card
    img2 = _build_generic(d, "mycelium-x86-n2", "--no-dashboard", "--preinstall", "podman")
    _personalise(img2, net, "n2", "--listen", f"{MESH}.2:7946",
                 "--network-config", str(_mesh_file(d, "n2", 2)))
    for img in (img1, img2):
        grow(img, 1024)  # room for podman and its apt lists
    base_state = (net / "network.yaml").read_text()
    tar = _web_image(d)
    link = free_port()
    with Guest(img1, d, name="n1", forward=[7946], nets=[SocketNet("listen", link)]) as g1, \
            Guest(img2, d, name="n2", nets=[SocketNet("connect", link)]) as g2, \
            serial_on_failure(g1, g2):  # both guests' log tails, whatever fails
        t0 = time.monotonic()
        for g in (g1, g2):
            g.wait_for(READY, timeout=420)
        api = g1.forwards[7946]
        status = [sys.executable, "-m", "agent.cli", "status", "--to", f"127.0.0.1:{api}",
                  "--network", str(net), "-o", "json"]

        def both_alive() -> bool:
            members = json.loads(run(*status))
            return {m["name"] for m in members if m["state"] == "alive"} == {"n1", "n2"}

        _eventually(both_alive, 120, "n1 and n2 alive in n1's view")
        print(f"two nodes up and joined: {time.monotonic() - t0:.0f} s")

        t1 = time.monotonic()
        with_web = fill_section(base_state, "  endomycetes:", WEB)
        assert with_web != base_state
        _push(d, api, with_web)
        # n2's users were not baked in: its first reconcile of the state makes them
        hosts = [ssh_host(g, key, timeout=300) for g in (g1, g2)]
        for g, host in zip((g1, g2), hosts, strict=True):
            # podman arrives with the containers recipe; the image is loaded by hand (no
            # registry), so the first kube play fails and the reconcile retry runs it
            # podman is configured only after its dependencies (policy.json and all)
            _eventually(lambda h=host: h.run("dpkg-query -W -f='${Status}' podman").stdout
                        == "install ok installed", 600, f"podman installed on {g.name}")
            _copy(g, key, tar, "/tmp/web.tar")
            host.check_output("podman import --change 'CMD [\"/bin/busybox\", \"httpd\", "
                              "\"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]' /tmp/web.tar "
                              "localhost/web:1")
        for g, host in zip((g1, g2), hosts, strict=True):
            _eventually(lambda h=host: h.run(FETCH).stdout.strip() == PAGE, 600,
                        f"the service answering on {g.name}")
        print(f"service on both nodes: {time.monotonic() - t1:.0f} s after the push")

        _push(d, api, base_state)
        for g, host in zip((g1, g2), hosts, strict=True):
            _eventually(lambda h=host: h.check_output("podman pod ps -q") == "", 300,
                        f"the service removed from {g.name}")
            assert not host.file("/etc/mycelium/kube/web.yaml").exists
        members = json.loads(run(*status))
        for m in members:  # the reconcile summary every node gossips
            assert m["status"]["status"] in ("ok", "applying"), m
            assert m["status"]["applied_version"] >= 1
        print(run(sys.executable, "-m", "agent.cli", "status", "--to", f"127.0.0.1:{api}",
                   "--network", str(net)))


def _copy(g: Guest, key: Path, src: Path, dest: str) -> None:
    run("scp", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-i", str(key), "-P", str(g.ssh_port), str(src), f"tester@127.0.0.1:{dest}")
