"""The network CA and node certificates (ECDSA P-256, X.509 via cryptography).

A node certificate names the node (CN and SAN), its role (OU) and the network id (O),
and is signed by the network CA, whose own subject carries the network id too. Peers
are identified by certificate, not hostname: `check_peer` re-checks chain, network,
expiry and the revocation list from network.yaml after the TLS handshake.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import CertificateError
from agent.trust.names import check_node_name

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
    """Sign a node's CSR; refuses a tampered CSR, one for another name, or a name that is
    not a DNS label (every caller checks first; this is the last door)."""
    check_node_name(node_name)
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


def to_der(cert: bytes) -> bytes:
    return _load_cert(cert).public_bytes(serialization.Encoding.DER)


def public_key(cert: bytes) -> ec.EllipticCurvePublicKey:
    key = _load_cert(cert).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertificateError("certificate key must be ECDSA")
    return key


def issued_by(cert: bytes, ca_cert: bytes) -> bool:
    """`cert` carries a valid signature of `ca_cert`'s key (CertificateError when either
    is not readable at all)."""
    try:
        _load_cert(cert).verify_directly_issued_by(_load_cert(ca_cert))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(key_pem: bytes, cert: bytes) -> bool:
    """`key_pem` is the private key of `cert` (CertificateError when either is not
    readable at all)."""
    return _load_key(key_pem).public_key() == public_key(cert)


@dataclass(frozen=True)
class CertInfo:
    node_name: str
    role: str
    network_id: str
    fingerprint: str
    not_after: datetime
    not_before: datetime = datetime.min.replace(tzinfo=UTC)
    client_only: bool = False  # no serverAuth: the operator's or a hypha's certificate


def cert_info(cert_data: bytes) -> CertInfo:
    cert = _load_cert(cert_data)

    def attr(oid: x509.ObjectIdentifier) -> str:
        a = cert.subject.get_attributes_for_oid(oid)
        return str(a[0].value) if a else ""

    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        serves = ExtendedKeyUsageOID.SERVER_AUTH in eku
    except x509.ExtensionNotFound:
        serves = False
    return CertInfo(attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATIONAL_UNIT_NAME),
                    attr(NameOID.ORGANIZATION_NAME), fingerprint(cert_data),
                    cert.not_valid_after_utc, cert.not_valid_before_utc, not serves)


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
    return _in_force(info, revoked, now)


def _in_force(info: CertInfo, revoked: set[str], now: datetime) -> CertInfo:
    """Valid now and not revoked."""
    if not info.not_before <= now <= info.not_after:
        raise CertificateError(f"certificate of {info.node_name} is not valid now "
                               f"(until {info.not_after:%Y-%m-%d})")
    if info.fingerprint in revoked:
        raise CertificateError(f"certificate of {info.node_name} is revoked")
    return info


class PeerVerdicts:
    """`check_peer` with the chain and network verdict remembered per certificate (the
    newest `size`): a certificate seen again costs a dictionary lookup, while validity and
    revocation are still checked against the time and the list of every call."""

    def __init__(self, ca_cert_pem: bytes, size: int = 4096) -> None:
        self.ca_cert_pem = ca_cert_pem
        self.size = size
        self._known: OrderedDict[bytes, CertInfo] = OrderedDict()

    def check(self, cert_der: bytes, revoked: set[str],
              now: datetime | None = None) -> CertInfo:
        now = now or datetime.now(UTC)
        info = self._known.get(cert_der)
        if info is None:
            info = check_peer(cert_der, self.ca_cert_pem, set(), now)
            self._known[cert_der] = info
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return _in_force(info, revoked, now)
