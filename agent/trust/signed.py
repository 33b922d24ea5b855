"""The wire shape shared by every signed document: `{"signed": {...}, "signatures": [...]}`.

Signatures cover `canonical(signed)`. Typed payload classes (Root, Envelope, JoinToken,
SeedSpore) read and write the `signed` dict and keep fields they do not know in `extra`,
so a round trip through an older node loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.errors import DataError
from agent.trust.encoding import canonical, dump_json, load_json_object
from agent.trust.keys import SigningKey


@dataclass(frozen=True)
class SignedDocument:
    signed: dict[str, Any]
    signatures: tuple[dict[str, str], ...]

    @classmethod
    def from_bytes(cls, data: bytes, what: str, cap: int) -> SignedDocument:
        obj = load_json_object(data, what, cap)
        signed, sigs = obj.get("signed"), obj.get("signatures")
        if not isinstance(signed, dict) or not isinstance(sigs, list):
            raise DataError(f"{what} must have a 'signed' object and a 'signatures' list")
        for s in sigs:
            if not (isinstance(s, dict) and isinstance(s.get("keyid"), str)
                    and isinstance(s.get("sig"), str)):
                raise DataError(f"{what}: each signature needs string 'keyid' and 'sig'")
        return cls(signed, tuple(sigs))

    def to_dict(self) -> dict[str, Any]:
        return {"signed": self.signed, "signatures": list(self.signatures)}

    def to_bytes(self) -> bytes:
        return dump_json(self.to_dict())

    @property
    def message(self) -> bytes:
        return canonical(self.signed)


def sign_document(signed: dict[str, Any], keys: Iterable[SigningKey]) -> SignedDocument:
    message = canonical(signed)
    return SignedDocument(signed, tuple(k.sign(message) for k in keys))


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise DataError(f"{where} must be a time like 2026-01-31T12:00:00Z")
    try:
        t = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as e:
        raise DataError(f"{where} must be a time like 2026-01-31T12:00:00Z, got {value!r}") from e
    return t.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `24h`, `30d` -> timedelta (operator-facing TTLs)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise DataError(f"duration {text!r} must look like 90s, 15m, 24h or 30d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def require(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    value = d.get(key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise DataError(f"{where}: field {key!r} must be {name}")
    return value
