"""Node names are DNS labels at every door: the pure rule, pki, `cert issue`,
`node bootstrap`, `token create --node-name` and the joining CLI (before any network
work, with one line and no certificate written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import DataError
from agent.trust import pki
from agent.trust.names import check_node_name

BAD = ["../../evil", "a;touch x;b", "", "-a", "a-", "N1", "a_b", "a.b", "x" * 64, "n1\n",
       "é"]


@pytest.mark.parametrize("name", ["n1", "a", "0", "pi-kitchen", "x" * 63, "a-b-c9"])
def test_dns_labels_pass(name):
    assert check_node_name(name) == name


@pytest.mark.parametrize("name", [*BAD, None, 7])
def test_everything_else_is_refused_in_one_line(name):
    with pytest.raises(DataError, match="not a DNS label") as e:
        check_node_name(name)
    assert "\n" not in str(e.value).replace("\\n", "")


@pytest.mark.parametrize("name", ["../../evil", "a;touch x;b"])
def test_pki_refuses_to_issue_for_a_bad_name(name):
    ca_key, ca_crt = pki.create_ca("t", "0" * 32)
    csr = pki.make_csr(pki.new_private_key(), name)
    with pytest.raises(DataError, match="not a DNS label"):
        pki.issue_certificate(ca_key, ca_crt, csr, node_name=name, role="rhizomorph",
                              network_id="0" * 32)


@pytest.fixture
def net(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    assert main(["init", "--network-name", "home", "--dir", str(d)]) == 0
    return d


@pytest.mark.parametrize("name", ["../../evil", "a;touch x;b"])
def test_operator_commands_refuse_bad_names(net: Path, tmp_path: Path, capsys, name):
    code = main(["token", "create", "--node-name", name, "--network", str(net)])
    assert code == 1 and "not a DNS label" in capsys.readouterr().err
    assert main(["token", "create", "--network", str(net)]) == 0
    token = capsys.readouterr().out.strip()
    (tmp_path / "x.csr").write_bytes(pki.make_csr(pki.new_private_key(), name))
    code = main(["cert", "issue", "--csr", str(tmp_path / "x.csr"), "--token", token,
                 "--node-name", name, "-o", str(tmp_path / "x.crt"), "--network", str(net)])
    err = capsys.readouterr().err
    assert code == 1 and "not a DNS label" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.crt").exists()
    code = main(["node", "bootstrap", "--data-dir", str(tmp_path / "d"), "--name", name,
                 "--listen", "127.0.0.1:7946", "--network", str(net)])
    assert code == 1 and "not a DNS label" in capsys.readouterr().err
    assert not (tmp_path / "d" / "node.crt").exists()


@pytest.mark.parametrize("name", ["../../evil", "a;touch x;b"])
def test_joining_cli_refuses_before_any_network_work(net: Path, tmp_path: Path, capsys,
                                                    name):
    assert main(["token", "create", "--network", str(net)]) == 0
    token = capsys.readouterr().out.strip()
    # the seed spore URL and join address lead nowhere: the name is refused before either
    code = main(["join", "--data-dir", str(tmp_path / "j"), "--listen", "127.0.0.1:9",
                 "--name", name, "--seed-spore", "http://127.0.0.1:1/spore.json",
                 "--join", "127.0.0.1:1", "--token", token])
    err = capsys.readouterr().err
    assert code == 1 and "not a DNS label" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "j" / "node.crt").exists()
