"""The Seed spore: a signed `spore.json` kept outside the network, for bootstrap and
split-brain recovery.

It carries the network identity (the whole root chain), bootstrap addresses and the
latest envelope. `mycelium init` signs it with the root keys; a Raft leader republishes
it signed with its own node key, whose certificate (from the network CA, role
sclerotium, not revoked) travels in the signature. Either kind verifies; versions rise.
The envelope inside is verified separately by trust.verify_envelope, as from any source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import (
    DataError,
    RollbackError,
    SignatureError,
    TrustError,
    WrongNetworkError,
)
from agent.trust.keys import SigningKey
from agent.trust.root import Root
from agent.trust.rules import check_threshold, parse_typed, verify_root_chain
from agent.trust.signed import (
    SignedDocument,
    format_time,
    now_utc,
    parse_time,
    require,
    sign_document,
)

SPORE_TYPE = "mycelium/seed-spore"
MAX_SPORE_BYTES = 2 << 20


@dataclass(frozen=True)
class SeedSpore:
    network_name: str
    network_id: str
    version: int
    issued: datetime
    roots: tuple[dict[str, Any], ...]  # signed root documents, version 1 first
    bootstrap: tuple[str, ...] = ()
    envelope: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeedSpore:
        w = "seed spore"
        if d.get("_type") != SPORE_TYPE:
            raise DataError(f"{w}: _type must be {SPORE_TYPE!r}")
        roots = require(d, "roots", list, w)
        boot = require(d, "bootstrap", list, w)
        if not roots or not all(isinstance(r, dict) for r in roots):
            raise DataError(f"{w}: 'roots' must be a non-empty list of root documents")
        if not all(isinstance(a, str) for a in boot):
            raise DataError(f"{w}: 'bootstrap' must be a list of HOST:PORT strings")
        env = d.get("envelope")
        if env is not None and not isinstance(env, dict):
            raise DataError(f"{w}: 'envelope' must be an object or null")
        known = {"_type", "network_name", "network_id", "version", "issued", "roots",
                 "bootstrap", "envelope"}
        return cls(require(d, "network_name", str, w), require(d, "network_id", str, w),
                   require(d, "version", int, w), parse_time(d.get("issued"), f"{w} issued"),
                   tuple(roots), tuple(boot), env,
                   {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "_type": SPORE_TYPE, "network_name": self.network_name,
                "network_id": self.network_id, "version": self.version,
                "issued": format_time(self.issued), "roots": list(self.roots),
                "bootstrap": list(self.bootstrap), "envelope": self.envelope}

    def root_chain_bytes(self) -> list[bytes]:
        return [SignedDocument(r["signed"], tuple(r["signatures"])).to_bytes()
                for r in self.roots]


def sign_spore_with_root(spore: SeedSpore, keys: list[SigningKey]) -> SignedDocument:
    return sign_document(spore.to_dict(), keys)


def sign_spore_with_node(spore: SeedSpore, key_pem: bytes, cert_pem: bytes) -> SignedDocument:
    """Leader republishing: no root key on any node, so the node's CA-issued key signs."""
    doc = SignedDocument(spore.to_dict(), ())
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(doc.message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(doc.message)
    else:
        raise DataError("node key must be ECDSA or Ed25519")
    return SignedDocument(doc.signed, ({"keyid": "node", "sig": sig.hex(),
                                        "cert": cert_pem.decode()},))


def _node_signature_ok(doc: SignedDocument, ca_pem: bytes, revoked: set[str],
                       now: datetime) -> bool:
    from agent.trust.pki import check_peer  # late: pki is only needed for node-signed spores

    for s in doc.signatures:
        if s.get("keyid") != "node" or not isinstance(s.get("cert"), str):
            continue
        try:
            cert = x509.load_pem_x509_certificate(s["cert"].encode())
            info = check_peer(cert.public_bytes(serialization.Encoding.DER), ca_pem,
                              revoked, now)
            if info.role != "sclerotium":
                continue
            pub = cert.public_key()
            sig = bytes.fromhex(s["sig"])
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(sig, doc.message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(sig, doc.message)
            else:
                continue
            return True
        except (ValueError, InvalidSignature, TrustError):
            continue
    return False


def verify_spore(data: bytes, root: Root, now: datetime | None = None,
                 ca_pem: bytes | None = None, revoked: set[str] | None = None,
                 held_version: int = 0) -> tuple[SeedSpore, Root]:
    """Verify a spore against the root this node trusts; returns it and its newest root.

    The root chain inside must start at the node's own trust anchor network id; a newer
    root in it is accepted only through proper N -> N+1 rotation signatures.
    """
    now = now or now_utc()
    doc, spore = parse_typed(data, "seed spore", MAX_SPORE_BYTES, SeedSpore.from_dict)
    if spore.network_id != root.network_id:
        raise WrongNetworkError(f"seed spore is for network {spore.network_id}, not "
                                f"{root.network_id}")
    chain = spore.root_chain_bytes()
    newest = verify_root_chain(chain[0], chain[1:], now)
    if newest.network_id != root.network_id or newest.version < root.version:
        raise RollbackError(f"seed spore carries root v{newest.version}, older than trusted "
                         f"v{root.version}")
    try:
        check_threshold(doc, newest, "root", "seed spore")
    except SignatureError:
        if ca_pem is None or not _node_signature_ok(doc, ca_pem, revoked or set(), now):
            raise SignatureError("seed spore: not signed by the root keys nor by a "
                                 "sclerotium of this network") from None
    if spore.version <= held_version:
        raise RollbackError(f"seed spore v{spore.version} is not newer than held v{held_version}")
    return spore, newest


def load_spore(data: bytes) -> SeedSpore:
    """Read a spore WITHOUT verifying it: for the operator's own file, or to find the
    root chain that verify_spore will then check."""
    return parse_typed(data, "seed spore", MAX_SPORE_BYTES, SeedSpore.from_dict)[1]


def new_spore(root_docs: list[dict[str, Any]], root: Root, version: int,
              bootstrap: list[str] | None = None,
              envelope: dict[str, Any] | None = None) -> SeedSpore:
    return SeedSpore(root.network_name, root.network_id, version, now_utc(),
                     tuple(root_docs), tuple(bootstrap or ()), envelope)
