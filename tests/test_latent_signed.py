"""LatentSpore with a record signer and verifier, over the in-memory network: a node's
record is taken only as its node signed it; relays may add rumours; refutations and new
meta are signed again, and nothing is signed when nothing changed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from agent.gossip.latent import LatentSpore, Message, SenderError
from agent.gossip.memory import MemoryNetwork
from agent.gossip.swim import Event, Member
from agent.trust import pki
from agent.trust.records import Proof, RecordSigner, RecordVerifier

CA_KEY, CA_CRT = pki.create_ca("home", "net-a")
REVOKED: set[str] = set()


def signer(name: str, role: str = "rhizomorph", client_only: bool = False) -> RecordSigner:
    key = pki.new_private_key()
    crt = pki.issue_certificate(CA_KEY, CA_CRT, pki.make_csr(key, name), node_name=name,
                                role=role, network_id="net-a", client_only=client_only)
    return RecordSigner(key, crt)


class CountingSigner:
    """A RecordSigner that counts its signatures."""

    def __init__(self, inner: RecordSigner) -> None:
        self.inner, self.info, self.signed = inner, inner.info, 0

    def sign(self, *args: Any) -> Proof:
        self.signed += 1
        return self.inner.sign(*args)


class Net:
    """Three signing, verifying nodes whose meta claims to be a sclerotium."""

    def __init__(self) -> None:
        self.net = MemoryNetwork(seed=1)
        self.meta = {n: {"role": "sclerotium", "version": 1} for n in ("n0", "n1", "n2")}
        self.signers = {n: CountingSigner(signer(n)) for n in self.meta}
        self.events: dict[str, list[Event]] = {n: [] for n in self.meta}
        self.nodes = {n: LatentSpore(n, n, self.net.transport(n), incarnation=1, seed=i,
                                     get_meta=lambda n=n: dict(self.meta[n]),
                                     on_event=self.events[n].append,
                                     signer=self.signers[n],
                                     verifier=RecordVerifier(CA_CRT, lambda: REVOKED))
                      for i, n in enumerate(self.meta)}
        self.net.nodes.update(self.nodes)

    async def meet(self) -> None:
        for n in self.nodes.values():
            await n.join(list(self.nodes))

    def record(self, observer: str, name: str) -> Member:
        return self.nodes[observer].ms.members[name]

    def own(self, name: str) -> Member:
        return self.nodes[name]._own()


def send(to: LatentSpore, sender: str, *records: Member, peer: pki.CertInfo | None = None):
    return asyncio.run(to.handle(Message("ping", sender, records).encode(), peer=peer))


def test_signed_records_spread_and_role_comes_from_the_certificate():
    net = Net()
    asyncio.run(net.meet())
    for o in net.nodes:
        rows = {v.name: v for v in net.nodes[o].views()}
        assert set(rows) == {"n0", "n1", "n2"} and all(v.alive for v in rows.values())
        for v in rows.values():  # the meta says sclerotium; the certificates do not
            assert (v.meta.role, v.meta.fp) == ("rhizomorph",
                                                net.signers[v.name].info.fingerprint)
    assert all(n.counters["forged"] == 0 for n in net.nodes.values())


def test_forged_and_unsigned_records_are_dropped_counted_and_reported_once():
    net = Net()
    asyncio.run(net.meet())
    n0, n1 = net.own("n0"), net.own("n1")
    forged_meta = replace(n1, meta={"role": "sclerotium", "version": 999999}, meta_version=99)
    moved = replace(n1, addr="127.0.0.1:1")
    newer = replace(n1, incarnation=n1.incarnation + 1)
    unsigned = replace(n1, proof=None, meta_version=99)
    left = replace(n1, state="left")  # only n1 may say it left
    by_n2 = replace(n1, meta_version=99, proof=net.signers["n2"].inner.sign(
        "n2", n1.addr, n1.incarnation, "alive", n1.meta, 99))
    ghost = Member("ghost", "127.0.0.1:1", 1, meta={"role": "sclerotium"})
    target = net.nodes["n2"]
    before, pending = net.record("n2", "n1"), dict(target._pending)
    send(target, "n0", n0, forged_meta, moved, newer, unsigned, left, by_n2, ghost)
    assert target.counters["forged"] == 7
    assert net.record("n2", "n1") == before and "ghost" not in target.ms.members
    reports = [e for e in net.events["n2"] if e.kind == "forged"]
    assert len(reports) == 1 and "not signed by 'n1'" in reports[0].detail
    assert set(target._pending) <= set(pending)  # nothing new to relay


def test_a_relayed_rumour_is_taken_and_its_subject_refutes_with_a_new_signature():
    net = Net()
    asyncio.run(net.meet())
    n2 = net.own("n2")
    send(net.nodes["n0"], "n1", net.own("n1"), replace(n2, state="suspect"))
    assert net.record("n0", "n2").state == "suspect" and net.nodes["n0"].counters["forged"] == 0
    signed = net.signers["n2"].signed
    # n2 hears the rumour about itself, refutes with a higher incarnation, signed anew
    send(net.nodes["n2"], "n0", net.own("n0"), net.record("n0", "n2"))
    assert net.nodes["n2"].ms.me.incarnation == n2.incarnation + 1
    asyncio.run(net.nodes["n2"].join(["n0", "n1"]))
    assert net.signers["n2"].signed == signed + 1
    for o in ("n0", "n1"):
        r = net.record(o, "n2")
        assert (r.state, r.incarnation) == ("alive", n2.incarnation + 1)
        assert net.nodes[o].counters["forged"] == 0


def test_own_record_is_signed_only_when_it_changed():
    net = Net()
    asyncio.run(net.meet())
    node, s = net.nodes["n0"], net.signers["n0"]
    first = s.signed
    for _ in range(5):
        asyncio.run(node.round())
    assert s.signed == first  # rounds with nothing new sign nothing
    net.meta["n0"]["version"] = 2
    asyncio.run(node.round())
    assert s.signed == first + 1
    asyncio.run(node.leave())
    assert node._own().proof.signed == "left" and s.signed == first + 2
    assert net.record("n1", "n0").state == "left" or net.record("n2", "n0").state == "left"


def test_a_peer_speaks_only_as_its_certificate_and_client_only_certificates_not_at_all():
    net = Net()
    asyncio.run(net.meet())
    target = net.nodes["n2"]
    with pytest.raises(SenderError, match="client-only"):
        send(target, "operator", peer=signer("operator", "hypha", client_only=True).info)
    with pytest.raises(SenderError, match="cannot send as 'n0'"):
        send(target, "n0", net.own("n0"), peer=net.signers["n1"].info)
    assert target.counters["refused"] == 2
    send(target, "n1", net.own("n1"), peer=net.signers["n1"].info)  # as itself: fine
    assert {e.kind for e in net.events["n2"]} >= {"refused"}
