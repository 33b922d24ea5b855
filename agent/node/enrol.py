"""Enrolment: a join token plus a CSR become a node certificate from the network CA.

Trust without trust-on-first-use: the operator hands the joiner a token (out of band). The
token names the network id, which is a hash of root version 1's keys, so the root chain
the joiner fetches from the seed spore is checked against it; that root carries the CA's
SHA-256, so the CA a sclerotium shows during enrolment is checked against the root. Only
sclerotia hold the CA key (never the root keys), and they serve enrolment on the agent's
port + 1 with server-only TLS, since the joiner has no certificate yet.

What the server issues is bounded by the Primary spore (through `EnrolLedger`): a name
held by a live (unrevoked) certificate in the registry is refused (409), each token
admits `uses` nodes counted in Raft (403 after), and without a Raft leader nothing is
issued (503) rather than a use going unrecorded. Names must be DNS labels (400).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from agent import tls
from agent.client import PeerClient
from agent.errors import DataError, PeerError, TokenError, TrustError
from agent.node.datadir import NodeDir, NodeIdentity
from agent.raft.secrets import secret_check
from agent.serve import read_json, refusal
from agent.trust import pki
from agent.trust.names import check_joiner_name
from agent.trust.root import Root
from agent.trust.rules import trust_initial_root, verify_root_chain
from agent.trust.signed import now_utc
from agent.trust.spore import SeedSpore, load_spore, verify_spore
from agent.trust.tokens import PREFIX, verify_token

if TYPE_CHECKING:
    from agent.raft.store import PrimarySpore

log = logging.getLogger(__name__)
MAX_ENROL_BYTES = 64 * 1024
ENROL_PATH = "/enroll/v1"
LEDGER_WAIT = 5.0  # seconds an enrolment waits for a Raft leader before answering 503


def issue_for_token(root: Root, ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes,
                    token: str, node_name: str, addresses: list[str]) -> bytes:
    """Verify the token for this name and sign the CSR (no use is counted here: the
    enrolment server counts in the Primary; the operator's `cert issue` is the CA itself)."""
    check_joiner_name(node_name)
    tok = verify_token(token, root, now_utc(), node_name=node_name)
    return pki.issue_certificate(ca_key_pem, ca_cert_pem, csr_pem, node_name=node_name,
                                 role=tok.role, network_id=root.network_id,
                                 addresses=addresses)


def enrol_port(addr: str) -> str:
    host, port = split_addr(addr)
    return f"{host}:{port + 1}"


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise DataError(f"address {addr!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


def token_network_id(token: str) -> str:
    """Read (not trust) the network id a token names: the anchor we then hold roots to."""
    body = token.strip()[len(PREFIX):]
    try:
        d = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        nid = d["signed"]["network_id"]
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise TokenError("join token is malformed; copy it again from `mycelium token "
                         "create`") from e
    if not isinstance(nid, str):
        raise TokenError("join token has no network id")
    return nid


def trust_from_token(spore_bytes: bytes, token: str) -> tuple[SeedSpore, Root, list[bytes]]:
    """Anchor the seed spore's root chain to the token, then verify spore and token."""
    nid = token_network_id(token)
    chain = load_spore(spore_bytes).root_chain_bytes()
    anchor = trust_initial_root(chain[0], now_utc(), network_id=nid,
                                check_expires=len(chain) == 1)
    spore, root = verify_spore(spore_bytes, anchor)
    verify_token(token, root, now_utc())
    return spore, root, chain


# --- server side (on sclerotia) ---------------------------------------------------------

class EnrolLedger(Protocol):
    """What the enrolment server needs from the Primary spore. Methods raise PeerError
    when the Primary cannot answer (no Raft leader reachable)."""

    async def claim_token(self, token_id: str, uses: int, name: str) -> bool:
        """Count one use; False if the token already admitted `uses` nodes."""
        ...

    async def holder(self, name: str) -> str | None:
        """Fingerprint of the live certificate holding this name, None if it is free."""
        ...

    async def record(self, name: str, fingerprint: str, role: str,
                     addresses: list[str]) -> None:
        """Enter a just-issued certificate in the registry."""
        ...


def _reply(error: str, status: int) -> web.Response:
    return web.json_response({"error": error}, status=status)


@dataclass
class EnrolService:
    node: NodeDir
    root_chain: list[bytes]
    known_peers: Any  # callable returning current member addresses
    ledger: EnrolLedger

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_ENROL_BYTES)
        app.router.add_get(f"{ENROL_PATH}/ca", self.get_ca)
        app.router.add_post(f"{ENROL_PATH}/join", self.post_join)
        return app

    async def get_ca(self, request: web.Request) -> web.Response:
        return web.json_response({"ca": self.node.ca_crt.read_text(),
                                  "roots": [json.loads(r) for r in self.root_chain]})

    async def post_join(self, request: web.Request) -> web.Response:
        """Checks in order, so a refusal spends nothing: request shape and name (400),
        token and CSR (403), name already held (409), then the token's use is counted
        (403 when used up); no Raft leader at either Primary step: 503."""
        try:
            body = await read_json(request, MAX_ENROL_BYTES)
            token, csr, name = body["token"], body["csr"], body["node_name"]
            addresses = [a for a in body.get("addresses", []) if isinstance(a, str)][:8]
            if not all(isinstance(x, str) for x in (token, csr, name)):
                raise TypeError("token, csr and node_name must be strings")
            check_joiner_name(name)
        except (ValueError, KeyError, TypeError, DataError) as e:
            return _reply(f"malformed enrolment request: {e}", 400)
        try:
            root = verify_root_chain(self.root_chain[0], self.root_chain[1:], now_utc())
            tok = verify_token(token, root, now_utc(), node_name=name)
            cert = issue_for_token(root, self.node.ca_key.read_bytes(),
                                   self.node.ca_crt.read_bytes(), csr.encode(), token, name,
                                   addresses)
        except DataError as e:  # a bad token or CSR is a TrustError: 403
            return refusal(e)
        try:
            held = await self.ledger.holder(name)
            if held:
                return _reply(f"node name {name} is already enrolled (fingerprint {held}); "
                              "to reuse it, revoke that certificate first (revoked: in "
                              "network.yaml)", 409)
            if not await self.ledger.claim_token(tok.id, tok.uses, name):
                return _reply("join token already used", 403)
        except PeerError as e:
            return _reply(f"cannot enrol now: {e}", 503)
        try:
            await self.ledger.record(name, pki.fingerprint(cert), tok.role, addresses)
        except PeerError as e:  # the leader registers it from gossip anyway
            log.warning("enrolled %s, not yet in the registry: %s", name, e)
        role = tok.role
        reply: dict[str, Any] = {"cert": cert.decode(), "ca": self.node.ca_crt.read_text(),
                                 "roots": [json.loads(r) for r in self.root_chain],
                                 "peers": list(self.known_peers())}
        if self.node.has_raft_secret():  # lets the node check a secret it is handed later
            reply["raft_check"] = secret_check(self.node.read_raft_secret())
        if role == "sclerotium":  # backbone members enrol others and run Raft
            reply["sclerotium"] = {"ca_key": self.node.ca_key.read_text(),
                                   "raft_secret": self.node.read_raft_secret().decode()}
        return web.json_response(reply)


class PrimaryLedger:
    """EnrolLedger over this sclerotium's Primary spore (None while its Raft side is not
    up) and the state's revocation list: a registry entry whose fingerprint is revoked,
    or that has none, holds no name. Waits up to `wait` seconds for a Raft leader."""

    def __init__(self, primary: Callable[[], PrimarySpore | None],
                 revoked: Callable[[], set[str]], wait: float = LEDGER_WAIT) -> None:
        self.primary, self.revoked, self.wait = primary, revoked, wait

    async def _ready(self) -> PrimarySpore:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            p = self.primary()
            if p is not None and p.has_quorum():
                return p
            if loop.time() >= deadline:
                raise PeerError("the Primary spore has no quorum (no Raft leader in reach), "
                                "so join token uses cannot be counted; try again when most "
                                "sclerotia are up")
            await asyncio.sleep(0.1)

    async def _commit(self, what: Callable[[PrimarySpore], Any]) -> Any:
        p = await self._ready()
        try:
            return await what(p)
        except TimeoutError as e:
            raise PeerError("the Primary spore did not commit in time (no quorum?)") from e

    async def claim_token(self, token_id: str, uses: int, name: str) -> bool:
        return await self._commit(lambda p: p.claim_token(token_id, uses, name))

    async def holder(self, name: str) -> str | None:
        p = await self._ready()
        fp = (p.read()["members"].get(name) or {}).get("fingerprint") or ""
        return fp if fp and fp not in self.revoked() else None

    async def record(self, name: str, fingerprint: str, role: str,
                     addresses: list[str]) -> None:
        await self._commit(lambda p: p.register(name, fingerprint, role, addresses))


def enrol_server_context(node: NodeDir) -> ssl.SSLContext:
    # no client certificate asked: the joiner has none yet; the token decides
    return tls.server_context(node.crt, node.key, None)


# --- client side (the joiner) -----------------------------------------------------------

async def enrol(node: NodeDir, root: Root, chain: list[bytes], token: str, name: str,
                listen: str, addresses: list[str], peers: list[str],
                timeout: float = 15.0) -> NodeIdentity:
    """Try each peer's enrolment port until one issues us a certificate."""
    check_joiner_name(name)
    expected_ca = root.extra.get("ca_sha256")
    if not isinstance(expected_ca, str):
        raise TrustError("root document names no CA (ca_sha256); re-create the network")
    key = pki.new_private_key()
    csr = pki.make_csr(key, name).decode()
    errors = []
    for peer in peers:
        try:
            reply = await _enrol_one(enrol_port(peer), expected_ca, token, csr, name, addresses,
                                     timeout)
        except (PeerError, TrustError) as e:
            errors.append(f"{peer}: {e}")
            continue
        ca = reply["ca"].encode()
        node.save_root_chain(chain)
        node.save_credentials(key, reply["cert"].encode(), ca)
        if isinstance(reply.get("raft_check"), str):
            node.write_raft_check(reply["raft_check"])
        if "sclerotium" in reply:
            s = reply["sclerotium"]
            node.save_sclerotium_secrets(s["ca_key"].encode(), s["raft_secret"].encode())
        info = pki.cert_info(reply["cert"].encode())
        ident = NodeIdentity(name, info.role, root.network_id, listen)
        node.write_identity(ident)
        node.save_peers([p for p in reply.get("peers", []) if isinstance(p, str)] + [peer])
        return ident
    raise PeerError("could not enrol: " + ("; ".join(errors) or "no bootstrap peers known "
                                           "(pass --join HOST:PORT or a seed spore with "
                                           "bootstrap addresses)"))


async def _enrol_one(addr: str, expected_ca: str, token: str, csr: str, name: str,
                     addresses: list[str], timeout: float) -> dict[str, Any]:
    host, port = split_addr(addr)
    base = f"https://{host}:{port}{ENROL_PATH}"
    try:  # the CA is fetched unverified, then checked by hash and pinned for the join
        async with PeerClient(tls.probe_context(), timeout=timeout) as probe:
            ca_pem = (await probe.request("GET", f"{base}/ca")).json()["ca"].encode()
    except (PeerError, DataError, KeyError, TypeError, AttributeError) as e:
        raise PeerError(f"enrolment failed: {e or type(e).__name__}") from e
    if pki.fingerprint(ca_pem) != expected_ca:
        raise TrustError(f"{addr} shows a CA that is not this network's")
    body = {"token": token, "csr": csr, "node_name": name, "addresses": addresses}
    try:
        async with PeerClient(tls.pinned_context(ca_pem), timeout=timeout) as pinned:
            r = await pinned.request("POST", f"{base}/join", json_body=body)
        reply = r.json()
    except (PeerError, DataError) as e:
        raise PeerError(f"enrolment failed: {e}") from e
    if not isinstance(reply, dict):
        raise PeerError(f"enrolment failed: {addr} answered {type(reply).__name__}, not an "
                        "object")
    if r.status != 200:
        raise PeerError(f"refused: {reply.get('error', r.status)}")
    return reply
