"""The Latent spore's wire format: one JSON object per message, short keys, compact records.

Rules:
- A message names its type (`t`) and sender (`f`); everything else is optional and absent
  when empty, so an idle probe and its ack are a few dozen bytes.
- A member record is a list, `[name, addr, incarnation, state, meta_version, meta]`, plus
  the node's proof (agent/trust/records.py) as a seventh item when signed. Records travel
  only when they changed recently, when the receiver's stamp (`y`: what the sender
  believes about the receiver) is behind, or in an anti-entropy exchange for the buckets
  whose sums differ.
- Anti-entropy (`sync`): `d` is [digest, buckets] (our table's digest as 16 hex digits and
  how many buckets to compare), `b` the responder's bucket sums (8 bytes each, base64),
  `w` [buckets, ids] the buckets whose records the requester sends and wants back, `c`
  set when a reply had more records than fit.
- Decoding is strict and size-capped: anything malformed is one MessageError.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agent.errors import DataError, SignatureError
from agent.gossip.swim import RANK, Member, Stamp
from agent.gossip.table import FINE
from agent.trust.encoding import canonical
from agent.trust.records import Proof

MAX_MSG_BYTES = 256 * 1024
MAX_MEMBERS = 4096
RECORD_BUDGET = 192 * 1024  # bytes of records one anti-entropy message carries at most
TYPES = ("ping", "ping-req", "sync", "ack", "nack")


class MessageError(DataError):
    """A gossip message that is malformed, oversized or truncated."""


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    members: tuple[Member, ...] = ()
    target: str = ""  # ping-req: address to probe on the sender's behalf
    stamp: Stamp | None = None  # what the sender believes about the receiver
    digest: tuple[int, int] | None = None  # sync request: (digest, buckets to compare)
    sums: tuple[int, ...] | None = None  # sync reply: the responder's bucket sums
    want: tuple[int, tuple[int, ...]] | None = None  # sync: (buckets, ids) to exchange
    more: bool = False  # the reply left records out (the requester syncs again soon)

    def encode(self) -> bytes:
        d: dict[str, Any] = {"t": self.type, "f": self.sender}
        if self.members:
            d["m"] = [record(m) for m in self.members]
        if self.target:
            d["g"] = self.target
        if self.stamp is not None:
            d["y"] = [self.stamp.incarnation, self.stamp.state, self.stamp.meta_version]
        if self.digest is not None:
            d["d"] = [f"{self.digest[0]:016x}", self.digest[1]]
        if self.sums is not None:
            d["b"] = base64.b64encode(b"".join(s.to_bytes(8, "big")
                                               for s in self.sums)).decode()
        if self.want is not None:
            d["w"] = [self.want[0], list(self.want[1])]
        if self.more:
            d["c"] = 1
        return canonical(d)


def record(m: Member) -> list[Any]:
    r: list[Any] = [m.name, m.addr, m.incarnation, m.state, m.meta_version, m.meta]
    return r if m.proof is None else [*r, m.proof.wire()]


def record_size(m: Member) -> int:
    return len(canonical(record(m))) + 1


def fit(records: list[Member], budget: int = RECORD_BUDGET) -> tuple[list[Member], bool]:
    """The records that fit in one message, and whether some were left out."""
    out, used = [], 0
    for m in records:
        used += record_size(m)
        if used > budget or len(out) >= MAX_MEMBERS:
            return out, True
        out.append(m)
    return out, False


def decode(data: bytes) -> Message:
    if len(data) > MAX_MSG_BYTES:
        raise MessageError(f"gossip message of {len(data)} bytes over the cap")
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError("gossip message is not JSON (truncated or corrupt)") from e
    if not isinstance(d, dict) or d.get("t") not in TYPES:
        raise MessageError("gossip message has no valid type")
    ms = d.get("m", [])
    if not isinstance(d.get("f"), str) or not isinstance(ms, list) or len(ms) > MAX_MEMBERS:
        raise MessageError("gossip message lacks sender or member list")
    target = d.get("g", "")
    if not isinstance(target, str):
        raise MessageError("gossip message target must be a string")
    return Message(d["t"], d["f"], tuple(_member(m) for m in ms), target,
                   _stamp(d.get("y")), _digest(d.get("d")), _sums(d.get("b")),
                   _want(d.get("w")), d.get("c") == 1)


def _member(m: Any) -> Member:
    if not (isinstance(m, list) and len(m) in (6, 7) and isinstance(m[0], str)
            and isinstance(m[1], str) and _int(m[2]) and m[3] in RANK and _int(m[4])
            and isinstance(m[5], dict)):
        raise MessageError("gossip message has a malformed member record")
    try:
        proof = Proof.from_wire(m[6]) if len(m) == 7 else None
    except SignatureError as e:
        raise MessageError(f"gossip message has a malformed proof: {e}") from e
    return Member(m[0], m[1], m[2], m[3], m[5], m[4], proof=proof)


def _stamp(v: Any) -> Stamp | None:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 3 and _int(v[0]) and v[1] in RANK
            and _int(v[2])):
        raise MessageError("gossip message has a malformed stamp")
    return Stamp(v[0], v[1], v[2])


def _buckets(v: Any) -> int:
    if not (_int(v) and 1 <= v <= FINE and v & (v - 1) == 0):
        raise MessageError("gossip message asks for a bucket count that is not a power "
                           f"of two up to {FINE}")
    return v


def _digest(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
            and len(v[0]) == 16):
        raise MessageError("gossip message has a malformed digest")
    try:
        return int(v[0], 16), _buckets(v[1])
    except ValueError as e:
        raise MessageError("gossip message digest is not hexadecimal") from e


def _sums(v: Any) -> tuple[int, ...] | None:
    if v is None:
        return None
    try:
        raw = base64.b64decode(v, validate=True) if isinstance(v, str) else b"?"
    except (ValueError, binascii.Error) as e:
        raise MessageError("gossip message bucket sums are not base64") from e
    if len(raw) % 8:
        raise MessageError("gossip message bucket sums are not whole")
    _buckets(len(raw) // 8)
    return tuple(int.from_bytes(raw[i:i + 8], "big") for i in range(0, len(raw), 8))


def _want(v: Any) -> tuple[int, tuple[int, ...]] | None:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], list)):
        raise MessageError("gossip message has a malformed bucket request")
    nb = _buckets(v[0])
    if len(v[1]) > nb or not all(_int(i) and i < nb for i in v[1]):
        raise MessageError("gossip message asks for buckets out of range")
    return nb, tuple(v[1])


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
