"""Mutual TLS refuses strangers at the handshake: real sockets on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.errors import CertificateError
from agent.node.daemon import server_context
from agent.node.datadir import NodeDir
from agent.tls import client_context
from agent.trust import pki


def write_node(d: Path, ca_key: bytes, ca_crt: bytes, name: str, nid: str, **kw) -> NodeDir:
    node = NodeDir(d)
    key = pki.new_private_key()
    crt = pki.issue_certificate(ca_key, ca_crt, pki.make_csr(key, name), node_name=name,
                                role="rhizomorph", network_id=nid, **kw)
    node.save_credentials(key, crt, ca_crt)
    return node


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_crt = pki.create_ca("home", "net-a")
    other_key, other_crt = pki.create_ca("home", "net-b")
    server = write_node(base / "server", ca_key, ca_crt, "server", "net-a")
    good = write_node(base / "good", ca_key, ca_crt, "good", "net-a")
    foreign = write_node(base / "foreign", other_key, other_crt, "foreign", "net-b")
    past = datetime.now(UTC) - timedelta(days=30)
    expired = write_node(base / "expired", ca_key, ca_crt, "expired", "net-a", days=1,
                         not_before=past)
    # self-signed: a CA cert used as a leaf, trusted by nobody
    selfk, selfc = pki.create_ca("home", "net-a")
    selfsigned = NodeDir(base / "self")
    selfsigned.save_credentials(selfk, selfc, ca_crt)
    return {"server": server, "good": good, "foreign": foreign, "expired": expired,
            "self": selfsigned, "ca": ca_crt}


class OneShotServer:
    """Accepts one connection, records whether the handshake succeeded, echoes a line."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.result: str | None = None
        self.peer_der: bytes | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.peer_der = tls.getpeercert(binary_form=True)
                self.result = "ok"
                tls.sendall(b"hello\n")
                tls.recv(10)
        except (ssl.SSLError, OSError) as e:
            self.result = f"refused: {e}"
        finally:
            self.sock.close()


def connect(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.recv(10)


def test_valid_peer_is_accepted_and_identified(pki_dir):
    srv = OneShotServer(server_context(pki_dir["server"]))
    g = pki_dir["good"]
    assert connect(srv.port, client_context(g.crt, g.key, g.ca_crt)) == b"hello\n"
    srv.t.join(5)
    assert srv.result == "ok"
    info = pki.check_peer(srv.peer_der, pki_dir["ca"], set())
    assert info.node_name == "good" and info.network_id == "net-a"


@pytest.mark.parametrize("who", ["foreign", "expired", "self", None])
def test_strangers_refused_at_tls_layer(pki_dir, who):
    srv = OneShotServer(server_context(pki_dir["server"]))
    if who is None:  # no client certificate at all
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=pki_dir["ca"].decode())
    else:
        n = pki_dir[who]
        ctx = client_context(n.crt, n.key, pki_dir["server"].ca_crt)
    got = b""
    try:
        got = connect(srv.port, ctx)
    except (ssl.SSLError, OSError):
        pass
    srv.t.join(5)
    assert srv.result is not None and srv.result.startswith("refused"), srv.result
    assert got == b""  # not one application byte reached the stranger


def test_client_refuses_server_of_other_network(pki_dir):
    srv = OneShotServer(server_context(pki_dir["foreign"]))
    g = pki_dir["good"]
    with pytest.raises(ssl.SSLError):
        connect(srv.port, client_context(g.crt, g.key, g.ca_crt))
    srv.t.join(5)


def test_check_peer_verdicts(pki_dir):
    good = pki_dir["good"].crt.read_bytes()
    fp = pki.fingerprint(good)
    with pytest.raises(CertificateError, match="revoked"):
        pki.check_peer(good, pki_dir["ca"], {fp})
    with pytest.raises(CertificateError, match="not issued by"):
        pki.check_peer(pki_dir["foreign"].crt.read_bytes(), pki_dir["ca"], set())
    with pytest.raises(CertificateError, match="not valid now"):
        pki.check_peer(pki_dir["expired"].crt.read_bytes(), pki_dir["ca"], set())


def test_remembered_verdicts_still_check_revocation_and_validity_every_time(pki_dir):
    """The API checks each request's peer through PeerVerdicts: a certificate seen before
    skips the signature check, never the revocation list or its validity window."""
    verdicts = pki.PeerVerdicts(pki_dir["ca"])
    good = pki_dir["good"].crt.read_bytes()
    info = verdicts.check(good, set())
    assert verdicts.check(good, set()) == info  # the second time from memory
    with pytest.raises(CertificateError, match="revoked"):
        verdicts.check(good, {info.fingerprint})
    with pytest.raises(CertificateError, match="not valid now"):
        verdicts.check(good, set(), now=info.not_after + timedelta(seconds=1))
    for _ in range(2):  # a refused certificate is not remembered as good
        with pytest.raises(CertificateError, match="not issued by"):
            verdicts.check(pki_dir["foreign"].crt.read_bytes(), set())


def test_csr_for_other_name_or_tampered_refused():
    ca_key, ca_crt = pki.create_ca("home", "n")
    csr = pki.make_csr(pki.new_private_key(), "alice")
    with pytest.raises(CertificateError, match="not node 'bob'"):
        pki.issue_certificate(ca_key, ca_crt, csr, node_name="bob", role="hypha",
                              network_id="n")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = bytearray(x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    import base64

    bad = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
           + b"-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(CertificateError):
        pki.issue_certificate(ca_key, ca_crt, bad, node_name="alice", role="hypha",
                              network_id="n")


def test_node_refuses_to_start_on_tls_files_that_load_but_do_not_belong(pki_dir, tmp_path):
    """A flipped byte can leave a PEM file loadable: the node must name it, not start and
    fail every handshake in silence (seen in test_torn_files with a flipped ca.crt)."""
    import shutil
    from types import SimpleNamespace

    from agent.errors import ConfigError

    good: NodeDir = pki_dir["good"]
    root = SimpleNamespace(extra={"ca_sha256": pki.fingerprint(pki_dir["ca"])})
    good.check_tls_files(root)  # the untouched node passes
    foreign: NodeDir = pki_dir["foreign"]
    cases = {"ca.crt": foreign.ca_crt, "node.crt": foreign.crt, "node.key": foreign.key}
    for name, replacement in cases.items():
        d = NodeDir(tmp_path / name)
        shutil.copytree(good.path, d.path)
        shutil.copyfile(replacement, d.path / name)
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            d.check_tls_files(root)
