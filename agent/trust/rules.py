"""Trust rules: bytes and what the node already trusts in, a verdict out. No I/O.

Rules, applied in this order so nothing untrusted is parsed further than needed:
1. Size cap before any parsing (envelopes 1 MiB, root documents and tokens 64 KiB).
2. Only the JSON wrapper is parsed before signatures are checked; the YAML payload is
   never parsed here (callers parse it after this returns).
3. Threshold of DISTINCT key ids of the required role, each signature valid over the
   canonical encoding of `signed`; repeating one key's signature counts once.
4. Right network id; not expired at `now`.
5. Version must rise: an envelope's version must be strictly higher than the one held
   (replay and rollback refused); a root update must be exactly version N+1 and be signed
   by a threshold of version N's root keys AND of its own root keys (as TUF does).
6. The payload's SHA-256 must match the signed hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from agent.errors import (
    DataError,
    ExpiredError,
    MalformedError,
    RollbackError,
    SignatureError,
    TooLargeError,
    TrustError,
    WrongNetworkError,
)
from agent.trust.envelope import Envelope
from agent.trust.keys import verify_sig
from agent.trust.root import Root, derive_network_id
from agent.trust.signed import SignedDocument

MAX_ENVELOPE_BYTES = 1 << 20
MAX_ROOT_BYTES = 64 * 1024
T = TypeVar("T")


def count_valid(doc: SignedDocument, root: Root, role: str) -> set[str]:
    """Key ids of `role` with a valid signature on doc (distinct by construction)."""
    allowed = set(root.role(role).keyids)
    good: set[str] = set()
    for s in doc.signatures:
        kid = s["keyid"]
        if kid in allowed and kid not in good and verify_sig(root.keys[kid], s["sig"],
                                                             doc.message):
            good.add(kid)
    return good


def check_threshold(doc: SignedDocument, root: Root, role: str, what: str) -> None:
    r = root.role(role)
    good = count_valid(doc, root, role)
    if not r.keyids or len(good) < r.threshold:
        raise SignatureError(f"{what}: {len(good)} valid {role} signature(s), "
                             f"{r.threshold} required")


def parse_signed(data: bytes, what: str, cap: int) -> SignedDocument:
    try:
        return SignedDocument.from_bytes(data, what, cap)
    except (TrustError, TooLargeError):
        raise
    except DataError as e:
        raise MalformedError(str(e)) from e


def parse_typed(data: bytes, what: str, cap: int,
                from_dict: Callable[[dict[str, Any]], T]) -> tuple[SignedDocument, T]:
    """Wrapper and typed payload, both failures reported as MalformedError (a TrustError).
    Not verified."""
    doc = parse_signed(data, what, cap)
    try:
        return doc, from_dict(doc.signed)
    except TrustError:
        raise
    except DataError as e:
        raise MalformedError(str(e)) from e


def check_expiry(expires: datetime, now: datetime, what: str) -> None:
    if now >= expires:
        raise ExpiredError(f"{what} expired at {expires:%Y-%m-%d %H:%M:%S}Z (this node's "
                           f"clock says {now:%Y-%m-%d %H:%M:%S}Z); sign a fresh one, or "
                           "fix this node's clock if it is wrong")


def trust_initial_root(data: bytes, now: datetime, network_id: str | None = None,
                       check_expires: bool = True) -> Root:
    """A version-1 root is the trust anchor: self-signed, id matching its own keys."""
    doc = parse_signed(data, "root document", MAX_ROOT_BYTES)
    root = Root.from_dict(doc.signed)
    if root.version != 1:
        raise TrustError(f"root document: trust anchor must be version 1, got {root.version}")
    if derive_network_id(root.network_name, root.keys, root.roles) != root.network_id:
        raise WrongNetworkError("root document: network id does not match its keys")
    if network_id is not None and root.network_id != network_id:
        raise WrongNetworkError(f"root document is for network {root.network_id}, "
                                f"expected {network_id}")
    check_threshold(doc, root, "root", "root document")
    if check_expires:
        check_expiry(root.expires, now, "root document")
    return root


def verify_root_update(trusted: Root, data: bytes, now: datetime,
                       check_expires: bool = True) -> Root:
    doc = parse_signed(data, "root document", MAX_ROOT_BYTES)
    new = Root.from_dict(doc.signed)
    if new.network_id != trusted.network_id:
        raise WrongNetworkError(f"root document is for network {new.network_id}, "
                                f"not {trusted.network_id}")
    if new.version != trusted.version + 1:
        raise RollbackError(f"root version {new.version} does not follow trusted version "
                            f"{trusted.version}")
    check_threshold(doc, trusted, "root", f"root v{new.version} (by v{trusted.version} keys)")
    check_threshold(doc, new, "root", f"root v{new.version} (by its own keys)")
    if check_expires:
        check_expiry(new.expires, now, f"root v{new.version}")
    return new


def verify_root_chain(anchor: bytes, updates: list[bytes], now: datetime) -> Root:
    """Walk v1 -> vN; only the last version needs to be unexpired."""
    root = trust_initial_root(anchor, now, check_expires=not updates)
    for i, data in enumerate(updates):
        root = verify_root_update(root, data, now, check_expires=i == len(updates) - 1)
    return root


def verify_envelope(data: bytes, root: Root, held_version: int, now: datetime) -> Envelope:
    """The node's acceptance rule for a state. Returns the envelope; payload not parsed."""
    doc, env = parse_typed(data, "envelope", MAX_ENVELOPE_BYTES, Envelope.from_dict)
    if env.network_id != root.network_id:
        raise WrongNetworkError(f"envelope is for network {env.network_id}, this node is in "
                                f"{root.network_id}")
    check_threshold(doc, root, "root", f"envelope v{env.version}")
    if hashlib.sha256(env.payload).hexdigest() != env.sha256:
        raise SignatureError(f"envelope v{env.version}: payload does not match its signed "
                             "SHA-256")
    check_expiry(env.expires, now, f"envelope v{env.version}")
    if env.version <= held_version:
        raise RollbackError(f"envelope v{env.version} is not newer than held v{held_version} "
                            "(replay or rollback)")
    return env
