"""--k3s-artifact: a path is hashed, a URL is downloaded once with its SHA-256 checked.

The K3s binary cannot be downloaded here, so a few random bytes stand in for it, served
over HTTP from a thread. That the file lands in the image's root filesystem at
/usr/local/bin/k3s, mode 0755, is checked on a real build in tests/test_boot.py.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

import build
from image.artifacts import resolve
from image.errors import BuildError


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, str]:
    f = tmp_path / "k3s"
    f.write_bytes(os.urandom(4096))
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.fixture
def served(blob: tuple[Path, str]) -> Iterator[str]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(blob[0].parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/k3s"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MYCELIUM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_path_is_hashed_and_checked(blob):
    f, sha = blob
    assert resolve(str(f)).sha256 == sha
    assert resolve(str(f), sha.upper()).local == f.resolve()
    with pytest.raises(BuildError, match=f"sha256 is {sha}, expected 0{{64}}; check"):
        resolve(str(f), "0" * 64)


def test_a_url_is_downloaded_once_and_cached(blob, served, cache):
    f, sha = blob
    a = resolve(served, sha)
    assert a.local.read_bytes() == f.read_bytes()
    assert a.local.is_relative_to(cache)
    f.unlink()  # the server has nothing now: the second build uses the cache
    assert resolve(served, sha).local == a.local


def test_a_wrong_download_is_refused_and_not_kept(served, cache):
    with pytest.raises(BuildError, match="downloaded sha256 is .* expected 1{64}"):
        resolve(served, "1" * 64)
    assert not any(p.is_file() for p in cache.rglob("*"))


@pytest.mark.parametrize(("src", "sha", "message"), [
    ("http://127.0.0.1:9/k3s", "", "needs --k3s-sha256"),
    ("/nonexistent/k3s", "", "not found"),
    ("/nonexistent/k3s", "abc", "must be 64 hex digits"),
    ("http://127.0.0.1:9/k3s", "2" * 64, "download failed"),
])
def test_bad_input_is_a_clear_error(src, sha, message):
    with pytest.raises(BuildError, match=message):
        resolve(src, sha)


@pytest.mark.skipif(os.geteuid() != 0, reason="build.py needs root")
def test_build_stops_at_a_wrong_sha256_before_bootstrapping(tmp_path, blob, capsys):
    rc = build.main(["--board", "x86", "--k3s-artifact", str(blob[0]), "--k3s-sha256",
                     "0" * 64, "--out", str(tmp_path / "dist"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("build.py: ") and "expected 0000" in err[-1]
    assert not (tmp_path / "w/rootfs").exists()
