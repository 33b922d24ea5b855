"""The signed envelope around one exact network.yaml: what every node accepts or refuses.

The payload is the operator's YAML bytes, untouched (base64 in JSON), so the hash and
signatures cover exactly what was written. Nodes parse it only after trust.verify_envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.errors import DataError
from agent.trust.keys import SigningKey
from agent.trust.signed import (
    SignedDocument,
    format_time,
    now_utc,
    parse_time,
    require,
    sign_document,
)

ENVELOPE_TYPE = "mycelium/envelope"
DEFAULT_TTL = timedelta(days=365)


@dataclass(frozen=True)
class Envelope:
    network_id: str
    version: int
    created: datetime
    expires: datetime
    sha256: str
    payload: bytes
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        w = "envelope"
        if d.get("_type") != ENVELOPE_TYPE:
            raise DataError(f"{w}: _type must be {ENVELOPE_TYPE!r}")
        try:
            payload = base64.b64decode(require(d, "payload", str, w), validate=True)
        except (binascii.Error, ValueError) as e:
            raise DataError(f"{w}: payload is not valid base64") from e
        known = {"_type", "network_id", "version", "created", "expires", "sha256", "payload"}
        return cls(
            network_id=require(d, "network_id", str, w),
            version=require(d, "version", int, w),
            created=parse_time(d.get("created"), f"{w} created"),
            expires=parse_time(d.get("expires"), f"{w} expires"),
            sha256=require(d, "sha256", str, w),
            payload=payload,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "_type": ENVELOPE_TYPE,
            "network_id": self.network_id,
            "version": self.version,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "sha256": self.sha256,
            "payload": base64.b64encode(self.payload).decode(),
        }


def seal(payload: bytes, network_id: str, version: int, keys: list[SigningKey],
         ttl: timedelta = DEFAULT_TTL, now: datetime | None = None) -> SignedDocument:
    """Wrap exact YAML bytes in a signed envelope (the caller picks the version)."""
    now = now or now_utc()
    env = Envelope(network_id, version, now, now + ttl, hashlib.sha256(payload).hexdigest(),
                   payload)
    return sign_document(env.to_dict(), keys)
