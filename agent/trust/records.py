"""Signed gossip records: a node certificate is a licence to speak for that node only.

Pure verdicts on gossip member records (no sockets, no files). Rules:
- What a node says about itself (name, address, incarnation, meta, meta version, and
  `alive` or `left`) is signed with its certificate's key; the record carries the
  certificate, so the signature survives any number of relays.
- A record is taken only when that certificate chains to the network CA, is for this
  network, is valid now and not revoked, names the record's node (CN), may serve (a
  client-only certificate, the operator's or a hypha's, cannot gossip) and the signature
  verifies over the canonical self-asserted part.
- Anyone else may only add a rumour: `suspect` or `dead` at the signed incarnation. A relay
  cannot change the address, meta or incarnation, and cannot say `left`; the subject
  refutes a rumour by signing a higher incarnation.
- Role and certificate fingerprint come from the certificate, never from meta.
Verdicts are cached (bounded) by certificate fingerprint and by signature, so a record
heard again costs one dictionary lookup.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import CertificateError, SignatureError
from agent.trust import pki
from agent.trust.encoding import canonical

SIGNED_STATES = ("alive", "left")  # what only the node itself may say
RUMOURS = ("suspect", "dead")  # what any member may say about another
CACHE = 4096  # verdicts kept per cache (certificates, signatures)


def self_part(name: str, addr: str, incarnation: int, signed: str, meta: dict[str, Any],
              meta_version: int) -> bytes:
    """The bytes a node signs about itself."""
    return canonical({"name": name, "addr": addr, "incarnation": incarnation,
                      "signed": signed, "meta": meta, "meta_version": meta_version})


@dataclass(frozen=True)
class Proof:
    """A node's signature over its self-asserted record, with its certificate (DER)."""

    signed: str  # the state the node itself asserted: alive | left
    sig: bytes
    cert: bytes

    def wire(self) -> dict[str, str]:
        return {"signed": self.signed, "sig": base64.b64encode(self.sig).decode(),
                "cert": base64.b64encode(self.cert).decode()}

    @classmethod
    def from_wire(cls, d: Any) -> Proof:
        if not isinstance(d, dict) or d.get("signed") not in SIGNED_STATES:
            raise SignatureError("gossip record has no valid proof")
        try:
            sig = base64.b64decode(d["sig"], validate=True)
            cert = base64.b64decode(d["cert"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise SignatureError("gossip record proof is not base64") from e
        if not 0 < len(sig) <= 160 or not 0 < len(cert) <= 4096:
            raise SignatureError("gossip record proof has a bad size")
        return cls(d["signed"], sig, cert)


class RecordSigner:
    """Signs this node's own record with its certificate key."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("node key must be ECDSA")
        self._key = key
        self.cert_der = pki.to_der(cert_pem)
        self.info = pki.cert_info(self.cert_der)

    def sign(self, name: str, addr: str, incarnation: int, signed: str,
             meta: dict[str, Any], meta_version: int) -> Proof:
        if name != self.info.node_name:
            raise CertificateError(f"this certificate speaks for {self.info.node_name!r} "
                                   f"only, not {name!r}")
        data = self_part(name, addr, incarnation, signed, meta, meta_version)
        return Proof(signed, self._key.sign(data, ec.ECDSA(hashes.SHA256())), self.cert_der)


class RecordVerifier:
    """Checks records against the network CA and the current revocation list."""

    def __init__(self, ca_pem: bytes, get_revoked: Callable[[], set[str]],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ca_pem = ca_pem
        self.get_revoked = get_revoked
        self.now = now
        self._certs: OrderedDict[bytes, pki.CertInfo] = OrderedDict()
        self._sigs: OrderedDict[bytes, bytes] = OrderedDict()  # sig -> signed bytes

    def certificate(self, der: bytes) -> pki.CertInfo:
        """Chain, network, expiry and revocation (revocation re-read every time)."""
        info = self._certs.get(der)
        if info is None or not info.not_before <= self.now() <= info.not_after:
            info = pki.check_peer(der, self.ca_pem, set(), self.now())
            _remember(self._certs, der, info)
        if info.fingerprint in self.get_revoked():
            raise CertificateError(f"certificate of {info.node_name} is revoked")
        if info.client_only:
            raise CertificateError(f"{info.node_name} holds a client-only certificate "
                                   f"and cannot gossip")
        return info

    def verify(self, name: str, addr: str, incarnation: int, state: str,
               meta: dict[str, Any], meta_version: int, proof: Proof) -> pki.CertInfo:
        """The certificate that speaks for this record, or SignatureError/CertificateError."""
        if state != proof.signed and not (proof.signed == "alive" and state in RUMOURS):
            raise SignatureError(f"record of {name!r} says {state!r}, which only "
                                 f"{name!r} itself may say")
        info = self.certificate(proof.cert)
        if info.node_name != name:
            raise SignatureError(f"certificate of {info.node_name!r} cannot speak for "
                                 f"{name!r}")
        data = self_part(name, addr, incarnation, proof.signed, meta, meta_version)
        if self._sigs.get(proof.sig) == data:
            return info
        try:
            pki.public_key(proof.cert).verify(proof.sig, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as e:
            raise SignatureError(f"record of {name!r} is not signed by {name!r}") from e
        _remember(self._sigs, proof.sig, data)
        return info


def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE:
        cache.popitem(last=False)
