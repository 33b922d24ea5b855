"""The network CA and node certificates (ECDSA P-256, X.509 via cryptography).

A node certificate names the node (CN and SAN), its role (OU) and the network id (O),
and is signed by the network CA, whose own subject carries the network id too. Peers
are identified by certificate, not hostname: `check_peer` re-checks chain, network,
expiry and the revocation list from network.yaml after the TLS handshake.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import CertificateError

ROLES = ("sclerotium", "rhizomorph", "hypha")


def new_private_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError("not a PEM private key") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("key must be ECDSA")
    return key


def _load_cert(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise CertificateError("not an X.509 certificate") from e


def create_ca(network_name: str, network_id: str, days: int = 3650) -> tuple[bytes, bytes]:
    key_pem = new_private_key()
    key = _load_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, network_id),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "mycelium-ca"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{network_name} CA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key_pem: bytes, node_name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
           .sign(_load_key(key_pem), hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _san(node_name: str, addresses: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(node_name)]
    for a in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            names.append(x509.DNSName(a))
    return x509.SubjectAlternativeName(names)


def issue_certificate(ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes, *,
                      node_name: str, role: str, network_id: str,
                      addresses: list[str] | None = None, days: int = 365,
                      client_only: bool = False,
                      not_before: datetime | None = None) -> bytes:
    """Sign a node's CSR; refuses a tampered CSR or one for another name."""
    if role not in ROLES:
        raise CertificateError(f"role must be one of {', '.join(ROLES)}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise CertificateError("CSR is not a PEM certificate signing request") from e
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not verify (tampered or corrupt)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != node_name:
        got = cns[0].value if cns else "nothing"
        raise CertificateError(f"CSR is for {got!r}, not node {node_name!r}")
    ca_key, ca = _load_key(ca_key_pem), _load_cert(ca_cert_pem)
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([] if client_only
                                               else [ExtendedKeyUsageOID.SERVER_AUTH])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, network_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .issuer_name(ca.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(_san(node_name, addresses or []), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: bytes) -> str:
    return hashlib.sha256(_load_cert(cert).public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class CertInfo:
    node_name: str
    role: str
    network_id: str
    fingerprint: str
    not_after: datetime


def cert_info(cert_data: bytes) -> CertInfo:
    cert = _load_cert(cert_data)

    def attr(oid: x509.ObjectIdentifier) -> str:
        a = cert.subject.get_attributes_for_oid(oid)
        return str(a[0].value) if a else ""

    return CertInfo(attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATIONAL_UNIT_NAME),
                    attr(NameOID.ORGANIZATION_NAME), fingerprint(cert_data),
                    cert.not_valid_after_utc)


def check_peer(cert_der: bytes, ca_cert_pem: bytes, revoked: set[str],
               now: datetime | None = None) -> CertInfo:
    """Chain, network, validity and revocation of a peer certificate, as one verdict."""
    now = now or datetime.now(UTC)
    cert, ca = _load_cert(cert_der), _load_cert(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise CertificateError("certificate is not issued by this network's CA") from e
    info = cert_info(cert_der)
    ca_net = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not ca_net or info.network_id != ca_net[0].value:
        raise CertificateError(f"certificate is for network {info.network_id!r}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(f"certificate of {info.node_name} is not valid now "
                               f"(until {info.not_after:%Y-%m-%d})")
    if info.fingerprint in revoked:
        raise CertificateError(f"certificate of {info.node_name} is revoked")
    return info


def revocation_middleware(get_revoked: Callable[[], set[str]], ca_pem: bytes):
    """aiohttp middleware: the handshake proved the chain; this refuses revoked peers.

    Python's ssl cannot consult a changing list during the handshake, so revocation (by
    listing fingerprints in network.yaml) is enforced on every request right after it.
    """
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler):
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            return web.json_response({"error": "client certificate required"}, status=401)
        try:
            request["peer"] = check_peer(der, ca_pem, get_revoked())
        except CertificateError as e:
            return web.json_response({"error": str(e)}, status=403)
        return await handler(request)

    return middleware
