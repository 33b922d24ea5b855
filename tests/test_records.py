"""Signed gossip records (agent/trust/records.py): who may say what about whom."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.errors import CertificateError, SignatureError
from agent.trust import pki
from agent.trust.records import Proof, RecordSigner, RecordVerifier

CA_KEY, CA_CRT = pki.create_ca("home", "net-a")
OTHER_KEY, OTHER_CRT = pki.create_ca("home", "net-b")


def signer(name: str, role: str = "rhizomorph", *, ca=(CA_KEY, CA_CRT), net="net-a",
           **kw) -> RecordSigner:
    key = pki.new_private_key()
    crt = pki.issue_certificate(ca[0], ca[1], pki.make_csr(key, name), node_name=name,
                                role=role, network_id=net, **kw)
    return RecordSigner(key, crt)


N1, N2 = signer("n1"), signer("n2")
REVOKED: set[str] = set()
V = RecordVerifier(CA_CRT, lambda: REVOKED)
META = {"version": 3, "role": "sclerotium"}


def rec(s: RecordSigner, name: str = "n1", state: str = "alive", signed: str = "alive",
        inc: int = 5, meta=META, mv: int = 2):
    proof = s.sign(name if s.info.node_name == name else s.info.node_name, "10.0.0.1:7946",
                   inc, signed, meta, mv)
    return dict(name=name, addr="10.0.0.1:7946", incarnation=inc, state=state, meta=meta,
                meta_version=mv, proof=proof)


def test_own_record_and_rumours_verify_and_role_comes_from_the_certificate():
    info = V.verify(**rec(N1))
    assert (info.node_name, info.role) == ("n1", "rhizomorph")  # meta said sclerotium
    assert V.verify(**rec(N1, state="suspect")).node_name == "n1"  # a relay's rumour
    assert V.verify(**rec(N1, state="dead")).node_name == "n1"
    assert V.verify(**rec(N1, state="left", signed="left")).node_name == "n1"


@pytest.mark.parametrize("change, error", [
    ({"meta": {"version": 999999, "role": "sclerotium"}}, "not signed by 'n1'"),
    ({"addr": "127.0.0.1:1"}, "not signed by 'n1'"),
    ({"incarnation": 6}, "not signed by 'n1'"),
    ({"meta_version": 3}, "not signed by 'n1'"),
    ({"state": "left"}, "only 'n1' itself may say"),  # a relay cannot make n1 leave
])
def test_a_relay_cannot_change_what_a_node_signed(change, error):
    r = rec(N1) | change
    with pytest.raises(SignatureError, match=error):
        V.verify(**r)


def test_a_certificate_speaks_only_for_its_own_name():
    r = rec(N2, name="n1")  # n2 signs a record that claims to be n1
    with pytest.raises(SignatureError, match="'n2' cannot speak for 'n1'"):
        V.verify(**r)
    with pytest.raises(CertificateError, match="speaks for 'n2' only"):
        N2.sign("n1", "a:1", 1, "alive", {}, 0)


def test_a_signature_moved_to_another_certificate_fails():
    r, other = rec(N1), rec(signer("n1"))
    r["proof"] = replace(r["proof"], cert=other["proof"].cert)
    with pytest.raises(SignatureError, match="not signed"):
        V.verify(**r)


def test_client_only_foreign_expired_and_revoked_certificates_cannot_gossip():
    op = signer("operator", "hypha", client_only=True)
    with pytest.raises(CertificateError, match="client-only"):
        V.verify(**rec(op, name="operator"))
    foreign = signer("n1", ca=(OTHER_KEY, OTHER_CRT), net="net-b")
    with pytest.raises(CertificateError, match="not issued by this network"):
        V.verify(**rec(foreign))
    old = signer("n3", days=1, not_before=datetime.now(UTC) - timedelta(days=30))
    with pytest.raises(CertificateError, match="not valid now"):
        V.verify(**rec(old, name="n3"))
    n4 = signer("n4")
    good = rec(n4, name="n4")
    V.verify(**good)  # cached as good ...
    REVOKED.add(n4.info.fingerprint)
    try:
        with pytest.raises(CertificateError, match="revoked"):  # ... revocation still bites
            V.verify(**good)
    finally:
        REVOKED.clear()


@pytest.mark.parametrize("wire, error", [
    (None, "no valid proof"),
    ({"signed": "dead", "sig": "", "cert": ""}, "no valid proof"),
    ({"signed": "alive", "sig": "!!", "cert": "AA=="}, "not base64"),
    ({"signed": "alive", "sig": "", "cert": "AA=="}, "bad size"),
    ({"signed": "alive"}, "not base64"),
])
def test_malformed_proofs_are_refused(wire, error):
    with pytest.raises(SignatureError, match=error):
        Proof.from_wire(wire)


def test_proof_round_trips_through_the_wire():
    p = rec(N1)["proof"]
    assert Proof.from_wire(p.wire()) == p
