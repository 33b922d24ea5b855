"""Enrolment: a join token plus a CSR become a node certificate from the network CA.

Trust without trust-on-first-use: the operator hands the joiner a token (out of band). The
token names the network id, which is a hash of root version 1's keys, so the root chain
the joiner fetches from the seed spore is checked against it; that root carries the CA's
SHA-256, so the CA a sclerotium shows during enrolment is checked against the root. Only
sclerotia hold the CA key (never the root keys), and they serve enrolment on the agent's
port + 1 with server-only TLS, since the joiner has no certificate yet.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from agent import pki
from agent.errors import CertificateError, DataError, PeerError, TokenError, TrustError
from agent.nodedir import NodeDir, NodeIdentity
from agent.root import Root
from agent.signed import now_utc
from agent.spore import SeedSpore, load_spore, verify_spore
from agent.tokens import PREFIX, verify_token
from agent.trust import trust_initial_root, verify_root_chain

MAX_ENROL_BYTES = 64 * 1024
ENROL_PATH = "/enroll/v1"


def issue_for_token(root: Root, ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes,
                    token: str, node_name: str, addresses: list[str]) -> bytes:
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

@dataclass
class EnrolService:
    node: NodeDir
    root_chain: list[bytes]
    known_peers: Any  # callable returning current member addresses

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_ENROL_BYTES)
        app.router.add_get(f"{ENROL_PATH}/ca", self.get_ca)
        app.router.add_post(f"{ENROL_PATH}/join", self.post_join)
        return app

    async def get_ca(self, request: web.Request) -> web.Response:
        return web.json_response({"ca": self.node.ca_crt.read_text(),
                                  "roots": [json.loads(r) for r in self.root_chain]})

    async def post_join(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            token, csr, name = body["token"], body["csr"], body["node_name"]
            addresses = [a for a in body.get("addresses", []) if isinstance(a, str)][:8]
            if not all(isinstance(x, str) for x in (token, csr, name)):
                raise DataError("token, csr and node_name must be strings")
            root = verify_root_chain(self.root_chain[0], self.root_chain[1:], now_utc())
            cert = issue_for_token(root, self.node.ca_key.read_bytes(),
                                   self.node.ca_crt.read_bytes(), csr.encode(), token, name,
                                   addresses)
            role = verify_token(token, root, now_utc()).role
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"malformed enrolment request: {e}"},
                                     status=400)
        except (DataError, CertificateError) as e:
            return web.json_response({"error": str(e)}, status=403)
        reply: dict[str, Any] = {"cert": cert.decode(), "ca": self.node.ca_crt.read_text(),
                                 "roots": [json.loads(r) for r in self.root_chain],
                                 "peers": list(self.known_peers())}
        if role == "sclerotium":  # backbone members enrol others and run Raft
            reply["sclerotium"] = {"ca_key": self.node.ca_key.read_text(),
                                   "raft_secret": self.node.raft_secret.read_text()}
        return web.json_response(reply)


def enrol_server_context(node: NodeDir) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(node.crt, node.key)
    ctx.verify_mode = ssl.CERT_NONE  # the joiner has no certificate yet; the token decides
    return ctx


# --- client side (the joiner) -----------------------------------------------------------

async def enrol(node: NodeDir, root: Root, chain: list[bytes], token: str, name: str,
                listen: str, addresses: list[str], peers: list[str],
                timeout: float = 15.0) -> NodeIdentity:
    """Try each peer's enrolment port until one issues us a certificate."""
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
    t = aiohttp.ClientTimeout(total=timeout)
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only to fetch the CA, which we then check by hash
    try:
        async with aiohttp.ClientSession(timeout=t) as s:
            async with s.get(f"https://{host}:{port}{ENROL_PATH}/ca", ssl=probe) as r:
                ca_pem = (await r.json())["ca"].encode()
            if pki.fingerprint(ca_pem) != expected_ca:
                raise TrustError(f"{addr} shows a CA that is not this network's")
            ctx = ssl.create_default_context(cadata=ca_pem.decode())
            ctx.check_hostname = False  # peers are addresses; the CA pin is what counts
            body = {"token": token, "csr": csr, "node_name": name, "addresses": addresses}
            async with s.post(f"https://{host}:{port}{ENROL_PATH}/join", json=body,
                              ssl=ctx) as r:
                reply = await r.json(content_type=None)
                if r.status != 200:
                    raise PeerError(f"refused: {reply.get('error', r.status)}")
                return reply
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
        raise PeerError(f"enrolment failed: {e or type(e).__name__}") from e
