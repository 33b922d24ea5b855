"""Join tokens: a short string that lets one new node ask the network CA for a certificate.

A token is a signed document (root keys, or a delegated admin key) bound to the network
id, a role and an expiry, encoded as `myc1.<base64url of its JSON>` so it fits in a
file on the boot partition (or, less wisely, on a command line).

A token admits `uses` nodes (1 unless the operator says more; tokens from before the field
existed count as 1). Its random nonce, signed with the rest, is its id: the enrolment
server counts uses per id in the Primary spore, so a used-up token is refused by every
sclerotium. Checking the signature is pure and lives here; counting needs Raft and does
not.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.errors import SignatureError, TokenError, TrustError
from agent.trust.encoding import canonical
from agent.trust.keys import SigningKey
from agent.trust.names import check_node_name
from agent.trust.root import Root
from agent.trust.rules import count_valid
from agent.trust.signed import (
    SignedDocument,
    format_time,
    now_utc,
    parse_time,
    require,
    sign_document,
)

TOKEN_TYPE = "mycelium/join-token"
PREFIX = "myc1."
MAX_TOKEN_CHARS = 8192
ROLES = ("sclerotium", "rhizomorph", "hypha")


@dataclass(frozen=True)
class JoinToken:
    network_id: str
    role: str
    expires: datetime
    nonce: str  # random, signed: the token's id where its uses are counted
    node_name: str | None = None  # if set, the token only admits this name
    uses: int = 1  # how many nodes it admits

    @property
    def id(self) -> str:
        return self.nonce


def create_token(root: Root, keys: list[SigningKey], role: str, ttl: timedelta,
                 node_name: str | None = None, now: datetime | None = None,
                 uses: int = 1) -> str:
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not isinstance(uses, int) or isinstance(uses, bool) or uses < 1:
        raise TokenError(f"a join token admits at least one node (uses >= 1), not {uses!r}")
    signed = {"_type": TOKEN_TYPE, "network_id": root.network_id, "role": role,
              "expires": format_time((now or now_utc()) + ttl),
              "nonce": secrets.token_hex(16), "uses": uses}
    if node_name:
        signed["node_name"] = check_node_name(node_name)
    doc = sign_document(signed, keys)
    return PREFIX + base64.urlsafe_b64encode(canonical(doc.to_dict())).decode().rstrip("=")


def verify_token(token: str, root: Root, now: datetime, role: str | None = None,
                 node_name: str | None = None) -> JoinToken:
    """Pure check of a token against the trusted root; raises TokenError with the reason."""
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
        raise TokenError(f"join token must start with {PREFIX!r} and be under "
                         f"{MAX_TOKEN_CHARS} characters; create one with `mycelium token create`")
    body = token[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        doc = SignedDocument.from_bytes(raw, "join token", MAX_TOKEN_CHARS)
        d = doc.signed
        if d.get("_type") != TOKEN_TYPE:
            raise TokenError("join token: wrong document type")
        tok = JoinToken(require(d, "network_id", str, "join token"),
                        require(d, "role", str, "join token"),
                        parse_time(d.get("expires"), "join token expires"),
                        require(d, "nonce", str, "join token"),
                        d.get("node_name") if isinstance(d.get("node_name"), str) else None,
                        _uses(d.get("uses")))
    except (binascii.Error, ValueError) as e:
        raise TokenError("join token is not valid base64") from e
    except TrustError:
        raise
    except Exception as e:  # DataError from parsing: same verdict, one message
        raise TokenError(f"join token is malformed: {e}") from e
    if tok.network_id != root.network_id:
        raise TokenError(f"join token is for network {tok.network_id}, not {root.network_id}")
    by_root = len(count_valid(doc, root, "root")) >= root.role("root").threshold
    admin = root.role("admin")
    by_admin = bool(admin.keyids) and len(count_valid(doc, root, "admin")) >= admin.threshold
    if not (by_root or by_admin):
        raise SignatureError("join token: not signed by enough root or admin keys")
    if now >= tok.expires:
        raise TokenError(f"join token expired at {tok.expires:%Y-%m-%d %H:%M:%S}Z; "
                         "create a new one with `mycelium token create`")
    if role is not None and tok.role != role:
        raise TokenError(f"join token is for role {tok.role}, not {role}")
    if tok.node_name and node_name is not None and tok.node_name != node_name:
        raise TokenError(f"join token is for node {tok.node_name!r}, not {node_name!r}")
    return tok


def _uses(value: object) -> int:
    """`uses` as signed: absent or 0 (tokens made before the field) admits one node."""
    if value is None or value == 0:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TokenError(f"join token: uses must be a positive integer, not {value!r}")
    return value
