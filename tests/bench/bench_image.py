"""Image figures (printed, never asserted). Run:
.venv/bin/python -m pytest -m bench -s tests/bench/bench_image.py

Per x86 board: compressed and uncompressed image size and where the space goes (the
manifest's `space`), cold build time (empty cache: MYCELIUM_CACHE is a fresh directory,
so the Debian bootstrap runs; a generic image) and warm build time (same cache; the
network's first node, whose users are baked in so SSH works), then that image booted
under QEMU (TCG unless KVM really works): time from QEMU start to the agent's ready
line, and the agent's RSS. Targets (issue 6): image under 200 MiB compressed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image.qemu import Guest, accel
from support.boot import READY, grow, make_network, ssh_host

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[2]
BOARDS = ["x86"]  # the x86 boards; the Pi images have their own figures


def _build(board: str, out: Path, cache: Path, *args: str) -> tuple[float, dict]:
    env = {**os.environ, "MYCELIUM_CACHE": str(cache)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "--board", board, "--out",
                           str(out), "--name", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return took, json.loads((out / "bench.manifest.json").read_text())


def _mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.0f} MiB"


def _print_sizes(board: str, m: dict) -> None:
    print(f"\n{board}: image {_mib(m['size_bytes'])} raw, {_mib(m['xz_size_bytes'])} xz; "
          f"rootfs {m['rootfs_mb']} MB; partitions (MB) {m['partitions_mb']}")
    print("  space (MB): " + ", ".join(f"{k} {v}" for k, v in m["space"].items()))
    slow = sorted(m["steps"].items(), key=lambda kv: -kv[1])[:4]
    print("  slowest steps (s): " + "; ".join(f"{k}: {v}" for k, v in slow))


def _boot(d: Path, img: Path, key: Path) -> tuple[float, int]:
    t0 = time.monotonic()
    with Guest(img, d, name="bench", memory_mb=1024) as g:
        g.wait_for(READY, timeout=600)
        ready = time.monotonic() - t0
        host = ssh_host(g, key, timeout=300)
        rss = int(host.check_output("ps -o rss= -C mycelium | sort -n | tail -1") or 0)
    return ready, rss


@pytest.mark.parametrize("board", BOARDS)
def test_image_size_build_times_and_boot(tmp_path, board):
    net, key = make_network(tmp_path, "  - {name: n1, role: sclerotium}")
    cache = tmp_path / "cache"
    cold_s, m = _build(board, tmp_path / "cold", cache)
    _print_sizes(board, m)
    warm_s, _ = _build(board, tmp_path / "warm", cache, "--network", str(net), "--node-name",
                       "n1", "--first-node", "--listen", "10.0.2.15:7946")
    print(f"  build: cold {cold_s:.0f} s (empty cache), warm {warm_s:.0f} s")
    img = tmp_path / "warm/bench.img"
    grow(img, 512)
    ready, rss = _boot(tmp_path, img, key)
    how = "KVM" if "kvm" in " ".join(accel()) else "TCG"
    print(f"  boot to agent ready ({how}): {ready:.0f} s; agent RSS {rss / 1024:.0f} MB")
