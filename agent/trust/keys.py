"""Ed25519 signing keys: generation, key ids, files, signing and verification.

A key id is the SHA-256 of the raw 32-byte public key, so the same key always has the
same id and a document cannot list one key twice under two names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import ConfigError, DataError


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key the operator holds (root or admin)."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def keyid(self) -> str:
        return key_id(self.public_raw)

    @property
    def public_hex(self) -> str:
        return self.public_raw.hex()

    def sign(self, message: bytes) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": self.private.sign(message).hex()}

    def to_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    @classmethod
    def from_pem(cls, data: bytes, what: str = "signing key") -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as e:
            raise ConfigError(f"{what} is not a PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{what} is not an Ed25519 key")
        return cls(key)


def verify_sig(public_hex: str, signature_hex: str, message: bytes) -> bool:
    """True only for a well-formed, valid signature; malformed input is simply False."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        pub.verify(bytes.fromhex(signature_hex), message)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_public_hex(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise DataError(f"{where}: public key must be 64 hex characters")
    try:
        bytes.fromhex(value)
    except ValueError as e:
        raise DataError(f"{where}: public key is not hex") from e
    return value
