"""The operator walk-through as tests: init, sign, verify, accept, rotate, tokens, certs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main


@pytest.fixture
def net(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    assert main(["init", "--network-name", "home", "--dir", str(d)]) == 0
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_makes_network_directory(net: Path):
    for f in ("network.yaml", "root.json", "ca.crt", "ca.key", "spore.json", "operator.crt"):
        assert (net / f).is_file(), f
    keys = list((net / "keys").glob("*.key"))
    assert len(keys) == 1
    for private in keys + [net / "ca.key", net / "operator.key"]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    root = json.loads((net / "root.json").read_text())["signed"]
    assert root["network_name"] == "home" and len(root["network_id"]) == 32
    assert "# " in (net / "network.yaml").read_text()  # the template is commented


def test_init_refuses_to_overwrite(net: Path, capsys):
    before = (net / "root.json").read_bytes()
    code, _, err = run(capsys, "init", "--network-name", "home", "--dir", str(net))
    assert code == 1 and "refusing to overwrite" in err
    assert (net / "root.json").read_bytes() == before


def test_multi_key_threshold(tmp_path: Path, capsys):
    d = tmp_path / "n"
    assert run(capsys, "init", "--network-name", "n", "--dir", str(d), "--root-keys", "3",
               "--threshold", "2")[0] == 0
    assert len(list((d / "keys").glob("*.key"))) == 3
    code, _, _ = run(capsys, "sign", "--network", str(d), "-o", str(tmp_path / "e.json"))
    assert code == 0
    env = json.loads((tmp_path / "e.json").read_text())
    assert len(env["signatures"]) == 2


def test_sign_verify_accept_and_replay(net: Path, tmp_path: Path, capsys):
    node = tmp_path / "node"
    e1, e2 = tmp_path / "v1.json", tmp_path / "v2.json"
    assert run(capsys, "sign", str(net / "network.yaml"), "--network", str(net), "-o",
               str(e1))[0] == 0
    assert run(capsys, "sign", "--network", str(net), "-o", str(e2))[0] == 0
    code, out, _ = run(capsys, "verify", str(e1), "--network", str(net))
    assert code == 0 and "version 1" in out
    assert run(capsys, "verify", str(e2), "--network", str(net), "--accept-into",
               str(node))[0] == 0
    code, _, err = run(capsys, "verify", str(e1), "--network", str(net), "--accept-into",
                       str(node))
    assert code == 1 and "not newer than held v2" in err
    assert (node / "accepted-version").read_text().strip() == "2"


def test_network_found_from_env_and_cwd(net: Path, tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "e.json"
    monkeypatch.setenv("MYCELIUM_NETWORK", str(net))
    assert run(capsys, "sign", "-o", str(out))[0] == 0
    monkeypatch.delenv("MYCELIUM_NETWORK")
    (net / "sub").mkdir()
    monkeypatch.chdir(net / "sub")
    assert run(capsys, "verify", str(out))[0] == 0
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "verify", str(out))
    assert code == 1 and "no network directory" in err


def test_verify_wrong_network_names_the_reason(net: Path, tmp_path: Path, capsys):
    other = tmp_path / "other"
    main(["init", "--network-name", "home", "--dir", str(other)])
    env = tmp_path / "e.json"
    run(capsys, "sign", "--network", str(other), "-o", str(env))
    code, _, err = run(capsys, "verify", str(env), "--network", str(net))
    assert code == 1 and "is for network" in err and err.count("\n") == 1


def test_sign_refuses_invalid_yaml(net: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: 1\nnetwork: {name: a}\nnetwork: {name: b}\n")
    code, _, err = run(capsys, "sign", str(bad), "--network", str(net), "-o",
                       str(tmp_path / "x"))
    assert code == 1 and not (tmp_path / "x").exists()


def test_keys_rotate_then_sign_with_new_keys(net: Path, tmp_path: Path, capsys):
    old_keys = sorted(p.name for p in (net / "keys").glob("*.key"))
    code, out, _ = run(capsys, "keys", "rotate", "--network", str(net))
    assert code == 0 and "root version 2" in out
    assert sorted(p.name for p in (net / "keys" / "retired").glob("*.key")) == old_keys
    assert (net / "roots" / "2.root.json").exists()
    assert run(capsys, "sign", "--network", str(net), "-o", str(tmp_path / "e"))[0] == 0
    assert run(capsys, "verify", str(tmp_path / "e"), "--network", str(net))[0] == 0


def test_token_and_cert_issue(net: Path, tmp_path: Path, capsys):
    from agent.trust import pki

    code, out, _ = run(capsys, "token", "create", "--role", "rhizomorph", "--ttl", "1h",
                       "--network", str(net))
    token = out.strip()
    assert code == 0 and token.startswith("myc1.")
    key = pki.new_private_key()
    (tmp_path / "n1.csr").write_bytes(pki.make_csr(key, "n1"))
    code, _, err = run(capsys, "cert", "issue", "--csr", str(tmp_path / "n1.csr"), "--token",
                       token, "--node-name", "n1", "-o", str(tmp_path / "n1.crt"),
                       "--network", str(net))
    assert code == 0, err
    info = pki.cert_info((tmp_path / "n1.crt").read_bytes())
    assert info.node_name == "n1" and info.role == "rhizomorph"


def test_token_create_uses(net: Path, capsys):
    from agent.authoring.netdir import NetworkDir
    from agent.trust.signed import now_utc
    from agent.trust.tokens import verify_token

    root = NetworkDir(net).root()
    code, out, _ = run(capsys, "token", "create", "--network", str(net))
    assert code == 0 and verify_token(out.strip(), root, now_utc()).uses == 1
    code, out, _ = run(capsys, "token", "create", "--uses", "2", "--network", str(net))
    assert code == 0 and verify_token(out.strip(), root, now_utc()).uses == 2
    code, _, err = run(capsys, "token", "create", "--uses", "0", "--network", str(net))
    assert code != 0 and "uses" in err


def test_cert_issue_refuses_expired_token(net: Path, tmp_path: Path, capsys):
    from datetime import timedelta

    from agent.authoring.netdir import NetworkDir
    from agent.trust import pki
    from agent.trust.signed import now_utc
    from agent.trust.tokens import create_token

    nd = NetworkDir(net)
    root = nd.root()
    token = create_token(root, nd.signing_keys(root), "rhizomorph", timedelta(minutes=1),
                         now=now_utc() - timedelta(hours=1))
    (tmp_path / "n1.csr").write_bytes(pki.make_csr(pki.new_private_key(), "n1"))
    code, _, err = run(capsys, "cert", "issue", "--csr", str(tmp_path / "n1.csr"), "--token",
                       token, "--node-name", "n1", "-o", str(tmp_path / "n1.crt"),
                       "--network", str(net))
    assert code == 1 and "expired" in err and not (tmp_path / "n1.crt").exists()


def test_private_keys_never_world_readable_even_with_permissive_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        main(["init", "--network-name", "u", "--dir", str(tmp_path / "u")])
    finally:
        os.umask(old)
    for p in (tmp_path / "u" / "keys").glob("*.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
