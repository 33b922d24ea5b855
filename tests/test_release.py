"""Release artifacts: the manifest rules (pure, tables) and the tar on disk."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent.errors import DataError
from agent.node.releases import ReleaseStore, file_sha256, pack, read_manifest, verify
from agent.trust.release import FileEntry, Manifest, WheelName, check_members, make_manifest
from support.wheels import make_wheel

SHA = "a" * 64


@pytest.mark.parametrize("name, dist, version, arches", [
    ("mycelium-0.2.0-py3-none-any.whl", "mycelium", "0.2.0", ("any",)),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", "cryptography", "50.0.2",
     ("x86_64",)),
    ("gevent-26.9.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", "gevent",
     "26.9.0", ("aarch64",)),
    ("ruamel.yaml-0.19.1-py3-none-any.whl", "ruamel_yaml", "0.19.1", ("any",)),
    ("pysyncobj-0.3.17-1-py3-none-any.whl", "pysyncobj", "0.3.17", ("any",)),
])
def test_wheel_names(name, dist, version, arches):
    w = WheelName.parse(name)
    assert (w.dist, w.version, w.architectures) == (dist, version, arches)


@pytest.mark.parametrize("bad", ["mycelium.tar", "mycelium-0.1.whl", "../x-1-py3-none-any"])
def test_bad_wheel_names(bad):
    with pytest.raises(DataError, match="not a wheel"):
        WheelName.parse(bad)


def entries(*names: str) -> dict[str, FileEntry]:
    return {f"wheels/{n}": FileEntry(SHA, 1) for n in names}


def test_manifest_takes_version_tags_and_architectures_from_the_wheels():
    m = make_manifest(entries("mycelium-0.2.0-py3-none-any.whl",
                              "cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl"))
    assert (m.version, m.python, m.architectures) == ("0.2.0", ("cp311", "py3"), ("x86_64",))
    assert make_manifest(entries("mycelium-1-py3-none-any.whl")).architectures == ("any",)


@pytest.mark.parametrize("files, message", [
    (("segno-1.6.6-py3-none-any.whl",), "exactly one mycelium wheel, it holds 0"),
    (("mycelium-1-py3-none-any.whl", "mycelium-2-py3-none-any.whl"), "it holds 2"),
])
def test_manifest_needs_one_agent_wheel(files, message):
    with pytest.raises(DataError, match=message):
        make_manifest(entries(*files))


def test_manifest_round_trip_keeps_unknown_fields():
    m = make_manifest(entries("mycelium-0.2.0-py3-none-any.whl"), extra={"future": [1]})
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m and back.to_dict()["future"] == [1]


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "format 2"),
    ({"version": "0.3.0"}, "says version 0.3.0 but its mycelium wheel is 0.2.0"),
    ({"files": {"../evil.whl": {"sha256": SHA, "size": 1}}}, "not wheels/NAME.whl"),
    ({"files": {"wheels/a/../../x.whl": {"sha256": SHA, "size": 1}}}, "not wheels/NAME.whl"),
    ({"files": {"wheels/mycelium-0.2.0-py3-none-any.whl": {"sha256": "x", "size": 1}}},
     "needs sha256"),
    ({"files": {}}, "1 to 500 files"),
])
def test_manifest_refusals(change, message):
    d = make_manifest(entries("mycelium-0.2.0-py3-none-any.whl")).to_dict()
    with pytest.raises(DataError, match=message):
        Manifest.from_dict({**d, **change})


def test_members_must_match_the_manifest():
    m = make_manifest(entries("mycelium-0.2.0-py3-none-any.whl"))
    check_members(m, dict(m.files))
    with pytest.raises(DataError, match="missing"):
        check_members(m, {})
    with pytest.raises(DataError, match="sha256"):
        check_members(m, {n: FileEntry("b" * 64, 1) for n in m.files})


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    wh = tmp_path / "wh"
    make_wheel(wh, "mycelium", "0.2.0", {"agent/__init__.py": b"# agent\n"})
    make_wheel(wh, "helper", "1.0", {"helper/__init__.py": b"x = 1\n"})
    return wh


def test_pack_is_content_addressed_and_checks(wheelhouse: Path, tmp_path: Path):
    path, sha, m = pack(wheelhouse, tmp_path / "a")
    path2, sha2, _ = pack(wheelhouse, tmp_path / "b")
    assert sha == sha2 == file_sha256(path) and path.name == f"mycelium-0.2.0-{sha[:12]}.tar"
    assert path.read_bytes() == path2.read_bytes()
    assert read_manifest(path) == m and set(m.files) == {
        "wheels/mycelium-0.2.0-py3-none-any.whl", "wheels/helper-1.0-py3-none-any.whl"}
    assert verify(path, sha, "0.2.0", "test") == m
    with pytest.raises(DataError, match="network.yaml names"):
        verify(path, "0" * 64, "0.2.0", "test")
    with pytest.raises(DataError, match="holds mycelium 0.2.0, network.yaml names 0.3.0"):
        verify(path, sha, "0.3.0", "test")


def _retar(src: Path, dst: Path, edit) -> None:
    with tarfile.open(src) as t, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as out:
        for m in t:
            data = t.extractfile(m).read()
            m2, data = edit(m, data)
            if m2 is not None:
                m2.size = len(data)
                out.addfile(m2, io.BytesIO(data))


@pytest.mark.parametrize("how, message", [
    ("flip", "sha256"),
    ("drop", "missing"),
    ("link", "not a regular file|not wheels/NAME.whl"),
    ("traverse", "not wheels/NAME.whl"),
])
def test_tampered_artifacts_are_refused(wheelhouse: Path, tmp_path: Path, how, message):
    path, _, _ = pack(wheelhouse, tmp_path / "a")
    bad = tmp_path / "bad.tar"

    def edit(m: tarfile.TarInfo, data: bytes):
        if m.name.startswith("wheels/helper"):
            if how == "flip":
                return m, data[:-1] + bytes([data[-1] ^ 1])
            if how == "drop":
                return None, b""
            if how == "traverse":
                m.name = "wheels/../../etc/x.whl"
            if how == "link":
                m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
                return m, b""
        return m, data

    _retar(path, bad, edit)
    with pytest.raises(DataError, match=message):
        read_manifest(bad)


def test_store_admits_only_the_named_artifact(wheelhouse: Path, tmp_path: Path):
    path, sha, _ = pack(wheelhouse, tmp_path / "a")
    store = ReleaseStore(tmp_path / "releases")
    tmp = store.incoming()
    tmp.write_bytes(path.read_bytes()[:-512])
    with pytest.raises(DataError):
        store.admit(tmp, sha, "0.2.0", "peer n2")
    assert not tmp.exists() and store.held() == []
    assert store.add(path) == (sha, read_manifest(path))
    assert store.held() == [sha] and store.file(sha).read_bytes() == path.read_bytes()
    assert store.file("../" + sha) is None


def test_cli_create_from_a_wheelhouse_prints_the_sha(wheelhouse: Path, tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "agent.cli", "release", "create",
                          "--wheelhouse", str(wheelhouse), "--out", str(tmp_path / "dist")],
                         capture_output=True, text=True, check=True).stdout
    sha = out.strip().splitlines()[-1]
    (tar,) = (tmp_path / "dist").glob("*.tar")
    assert sha == file_sha256(tar) and f"release: {{version: 0.2.0, sha256: {sha}}}" in out
    shown = subprocess.run([sys.executable, "-m", "agent.cli", "release", "show", str(tar)],
                           capture_output=True, text=True, check=True).stdout
    assert '"version": "0.2.0"' in shown


@pytest.mark.parametrize("arch, want, not_there", [
    ("aarch64", "manylinux_2_36_aarch64", "x86_64"),
    ("arm64", "manylinux2014_aarch64", "x86_64"),
    ("x86_64", "manylinux1_x86_64", "aarch64"),
])
def test_platform_tags_for_another_architecture(arch, want, not_there):
    from agent.authoring.release import platform_args

    args = platform_args(arch)
    assert want in args and not any(not_there in a for a in args)
    assert args[::2] == ["--platform"] * (len(args) // 2)


def test_create_for_an_unknown_architecture_says_which_exist(tmp_path: Path):
    from agent.authoring.release import SOURCE, create_release
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown architecture 'riscv64'; use one of "):
        create_release(tmp_path, None, SOURCE, "riscv64")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_create_for_aarch64(tmp_path: Path):
    """`release create --arch aarch64` on this x86_64 machine: the agent's wheel built
    here, every dependency's aarch64 wheel from the package index (needs it; about 30 s
    with a warm pip cache)."""
    out = subprocess.run([sys.executable, "-m", "agent.cli", "release", "create", "--arch",
                          "aarch64", "--out", str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    (tar,) = tmp_path.glob("*.tar")
    m = read_manifest(tar)
    assert m.architectures == ("aarch64",) and out.strip().splitlines()[-1] == file_sha256(tar)
    assert any(n.startswith("wheels/cryptography-") and "aarch64" in n for n in m.files)
    assert not any("x86_64" in n for n in m.files)


# --- network.yaml `release:` ---------------------------------------------------------

REL = "schema: 1\nnetwork: {name: home}\nrelease:\n  version: 0.2.0\n  sha256: %s\n"


def test_release_in_network_yaml():
    from agent.desired.model import Release
    from agent.desired.schema import parse_state

    s = parse_state((REL % SHA + "  url: https://example.org/r.tar\n").encode())
    assert s.release == Release("0.2.0", SHA, "https://example.org/r.tar")
    assert parse_state(b"schema: 1\nnetwork: {name: home}\n").release is None


@pytest.mark.parametrize("text, message", [
    (REL % ("A" * 64), "n.yaml:5:11: release.sha256 must be 64 lower-case hex digits"),
    (REL % "abc", "n.yaml:5:11: release.sha256 must be 64 lower-case hex digits"),
    (REL % SHA + "  url: ftp://x\n", "n.yaml:6:8: release.url must be an http(s) URL"),
    (f"schema: 1\nnetwork: {{name: home}}\nrelease: {{sha256: {SHA}}}\n",
     "n.yaml:3:10: release is missing required key 'version'"),
    (REL % SHA + "  sha: 1\n", "n.yaml:6:3: unknown key 'sha' in release; did you mean"),
])
def test_bad_release_refused_with_line_and_column(text, message):
    from agent.desired.schema import parse_state
    from agent.errors import SchemaError

    with pytest.raises(SchemaError) as e:
        parse_state(text.encode(), "n.yaml")
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_the_root_signature_covers_the_release(tmp_path: Path):
    import base64
    import json

    from agent.authoring.identity import init_network, sign_state
    from agent.errors import TrustError
    from agent.trust.rules import verify_envelope
    from agent.trust.signed import now_utc

    net = init_network(tmp_path / "net", "home")
    _, env = sign_state(net, (REL % SHA).encode(), 1)
    assert verify_envelope(env, net.root(), 0, now_utc()).payload == (REL % SHA).encode()
    doc = json.loads(env)  # another artifact named in the same signed envelope
    doc["signed"]["payload"] = base64.b64encode((REL % ("b" * 64)).encode()).decode()
    with pytest.raises(TrustError):
        verify_envelope(json.dumps(doc).encode(), net.root(), 0, now_utc())


# --- fetching: a url when no peer holds it, a wrong copy refused ---------------------

def test_fetch_from_url_refuses_a_wrong_copy_then_takes_a_good_one(wheelhouse, tmp_path):
    import asyncio

    from aiohttp import web

    from agent.client import PeerClient
    from agent.desired.model import Release
    from agent.errors import BusyError, TransportError
    from agent.node.events import EventLog
    from agent.node.updater import fetch_release

    path, sha, m = pack(wheelhouse, tmp_path / "a")
    good = path.read_bytes()
    serve = {"body": good[:-1] + b"\x01"}
    hits = []

    async def handler(_: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(body=serve["body"])

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/r.tar", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        want = Release("0.2.0", sha, f"http://127.0.0.1:{port}/r.tar")
        store, events = ReleaseStore(tmp_path / "releases"), EventLog()
        try:
            async with PeerClient() as peers:
                with pytest.raises(TransportError, match="no source gave it"):
                    await fetch_release(want, ["127.0.0.1:1"], store, peers, events, "n1")
                assert store.held() == [] and list(store.path.iterdir()) == []
                assert "refused release 0.2.0 from http://" in events.recent(5)[-1]["message"]
                serve["body"] = good

                class BusyPeers:  # every holder answers 503: wait for them, not the url
                    async def download(self, *_: object, **__: object) -> str:
                        raise BusyError("busy")

                with pytest.raises(BusyError):
                    await fetch_release(want, ["a:1", "b:1"], store, BusyPeers(), events, "n1")
                assert len(hits) == 1
                got, source = await fetch_release(want, [], store, peers, events, "n1")
                assert (got, source, store.held()) == (m, want.url, [sha])
        finally:
            await runner.cleanup()

    asyncio.run(go())
    assert len(hits) == 2


def test_a_failed_install_is_tried_again_later_not_in_a_loop(wheelhouse, tmp_path):
    """pip failing (or a full disk) is not the release's fault: the node tries the install
    again after a growing delay, instead of only after its agent restarts."""
    import asyncio
    from types import SimpleNamespace

    from agent.desired.model import DesiredState, Release
    from agent.errors import StorageError
    from agent.gossip.member import ReleaseMeta
    from agent.node.events import EventLog
    from agent.node.updater import Updater, install_retry_delay

    assert [install_retry_delay(n) for n in (1, 2, 3, 9)] == [30.0, 60.0, 120.0, 1800.0]
    path, sha, _ = pack(wheelhouse, tmp_path / "a")
    store = ReleaseStore(tmp_path / "releases")
    store.add(path, sha)
    host = SimpleNamespace(events=EventLog(), peers=None, members=lambda: [],
                           refresh_meta=lambda: None,
                           state=DesiredState("net", release=Release("0.2.0", sha, "")))
    now, calls = [100.0], []

    def install(release, artifact, manifest) -> None:
        calls.append(now[0])
        if len(calls) == 1:
            raise StorageError("no space left on device")

    up = Updater(host, "n1", store, ReleaseMeta(), install, clock=lambda: now[0])
    for t in (100.0, 101.0, 129.0, 130.0, 131.0):
        now[0] = t
        assert asyncio.run(up.step()) is True
    assert calls == [100.0, 130.0]  # once, then after 30 s; none after it took
    assert any("no space left on device; trying again in 30 s" in e["message"]
               for e in host.events.recent())
