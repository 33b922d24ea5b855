"""The enrolment server against a 30-line fake ledger: names are DNS labels (400), a
token admits as many nodes as its `uses` (403 after), a name held by a live certificate is
refused (409), and without the Primary (no quorum) nothing is issued (503). The real
ledger over the Primary spore is checked in test_cluster.py and test_backbone.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.authoring.bootstrap import bootstrap_first_node
from agent.authoring.identity import init_network, make_token
from agent.errors import PeerError
from agent.node.datadir import NodeDir
from agent.node.enrol import ENROL_PATH, EnrolService, PrimaryLedger
from agent.trust import pki


class FakeLedger:
    def __init__(self) -> None:
        self.claims: dict[str, list[str]] = {}
        self.members: dict[str, str] = {}
        self.down = False

    async def claim_token(self, token_id: str, uses: int, name: str) -> bool:
        if self.down:
            raise PeerError("the Primary spore has no quorum")
        used = self.claims.setdefault(token_id, [])
        if len(used) >= max(uses, 1):
            return False
        used.append(name)
        return True

    async def holder(self, name: str) -> str | None:
        if self.down:
            raise PeerError("the Primary spore has no quorum")
        return self.members.get(name)

    async def record(self, name: str, fingerprint: str, role: str,
                     addresses: list[str]) -> None:
        self.members[name] = fingerprint


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("enrol")
    net = init_network(d / "net", "enrol")
    bootstrap_first_node(net, d / "n1", "n1", "127.0.0.1:7946")
    return net, NodeDir(d / "n1")


def join(node: NodeDir, ledger: Any, *requests: dict[str, Any]) -> list[tuple[int, dict]]:
    svc = EnrolService(node, node.root_chain(), lambda: [], ledger)

    async def go():
        out = []
        async with TestClient(TestServer(svc.app())) as c:
            for body in requests:
                r = await c.post(f"{ENROL_PATH}/join", json=body)
                out.append((r.status, await r.json()))
        return out

    return asyncio.run(go())


def ask(token: str, name: str, csr_name: str | None = None) -> dict[str, Any]:
    csr = pki.make_csr(pki.new_private_key(), csr_name or name).decode()
    return {"token": token, "csr": csr, "node_name": name, "addresses": ["127.0.0.1"]}


def test_unbound_token_enrols_once(network):
    net, node = network
    ledger = FakeLedger()
    token = make_token(net, "rhizomorph", timedelta(hours=1))
    (s1, b1), (s2, b2) = join(node, ledger, ask(token, "a1"), ask(token, "a2"))
    assert s1 == 200 and pki.cert_info(b1["cert"].encode()).node_name == "a1"
    assert s2 == 403 and b2["error"] == "join token already used" and "cert" not in b2
    assert ledger.members["a1"] == pki.fingerprint(b1["cert"].encode())


def test_uses_two_admits_two(network):
    net, node = network
    token = make_token(net, "rhizomorph", timedelta(hours=1), uses=2)
    got = join(node, FakeLedger(), ask(token, "b1"), ask(token, "b2"), ask(token, "b3"))
    assert [s for s, _ in got] == [200, 200, 403]


def test_a_held_name_is_refused_with_its_fingerprint(network):
    net, node = network
    ledger = FakeLedger()
    ledger.members["n1"] = "ab" * 32
    token = make_token(net, "rhizomorph", timedelta(hours=1))
    [(status, body)] = join(node, ledger, ask(token, "n1"))
    assert status == 409 and "cert" not in body
    assert body["error"].startswith("node name n1 is already enrolled (fingerprint abab")
    assert ledger.claims == {}  # the token is not spent on a refusal


@pytest.mark.parametrize(("name", "why"), [
    ("../../evil", "not a DNS label"), ("a;touch x;b", "not a DNS label"),
    ("N1", "not a DNS label"), ("x" * 64, "not a DNS label"),
    # the operator's certificate name: operator-only routes (rollout actions) check it
    ("operator", "is the operator's certificate"),
])
def test_bad_names_are_400_and_spend_nothing(network, name, why):
    net, node = network
    ledger = FakeLedger()
    token = make_token(net, "rhizomorph", timedelta(hours=1))
    [(status, body)] = join(node, ledger, ask(token, name))
    assert status == 400 and why in body["error"] and "cert" not in body
    assert ledger.claims == {}


def test_csr_for_another_name_spends_nothing(network):
    net, node = network
    ledger = FakeLedger()
    token = make_token(net, "rhizomorph", timedelta(hours=1))
    [(status, _)] = join(node, ledger, ask(token, "c1", csr_name="c2"))
    assert status == 403 and ledger.claims == {}


def test_without_the_primary_nothing_is_issued(network):
    net, node = network
    ledger = FakeLedger()
    ledger.down = True
    token = make_token(net, "rhizomorph", timedelta(hours=1))
    [(status, body)] = join(node, ledger, ask(token, "d1"))
    assert status == 503 and "quorum" in body["error"] and "cert" not in body


class FakePrimary:
    """What PrimaryLedger reads from the Primary spore."""

    def __init__(self, members: dict[str, dict[str, Any]]) -> None:
        self.members = members

    def read(self) -> dict[str, Any]:
        return {"members": self.members}

    def has_quorum(self) -> bool:
        return True


def test_primary_ledger_frees_a_name_whose_certificate_is_revoked():
    fake = FakePrimary({"n1": {"fingerprint": "f1"}, "n2": {"fingerprint": "f2"},
                        "ghost": {"fingerprint": ""}})
    revoked = {"f2"}
    ledger = PrimaryLedger(lambda: fake, lambda: revoked)  # type: ignore[arg-type]

    async def go():
        return [await ledger.holder(n) for n in ("n1", "n2", "ghost", "n9")]

    assert asyncio.run(go()) == ["f1", None, None, None]
    with pytest.raises(PeerError, match="Primary"):
        asyncio.run(PrimaryLedger(lambda: None, set, wait=0.2).holder("n1"))


def test_without_quorum_the_real_ledger_answers_503(network, tmp_path):
    """A sclerotium whose Raft peers are all unreachable has no leader: enrolment fails
    with 503 instead of issuing on an unrecorded use of the token."""
    from agent.raft.store import PrimarySpore, PrimaryStore
    from support.primary import ports

    net, node = network
    me, *gone = ports(3)
    store = PrimaryStore(me, gone, b"s" * 32, tmp_path / "raft")
    try:
        ledger = PrimaryLedger(lambda: PrimarySpore(store), set, wait=1.0)
        token = make_token(net, "rhizomorph", timedelta(hours=1))
        [(status, body)] = join(node, ledger, ask(token, "e1"))
        assert status == 503 and "quorum" in body["error"] and "cert" not in body
    finally:
        store.destroy()
