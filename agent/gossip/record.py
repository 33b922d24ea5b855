"""A member record as SWIM ranks it: who, where, which incarnation, which state, what meta.

Rules: states rank alive < suspect < dead < left at one incarnation; `changed` and `cert`
are local (never gossiped); the proof is the node's own signature over what it said about
itself (agent/trust/records.py) and travels with the fields it signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.trust.pki import CertInfo
from agent.trust.records import Proof

RANK = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    addr: str
    incarnation: int
    state: str = "alive"
    meta: dict[str, Any] = field(default_factory=dict)
    meta_version: int = 0
    changed: float = 0.0  # local time of the last state change (not gossiped)
    proof: Proof | None = None  # the node's signature over its own part (gossiped)
    cert: CertInfo | None = None  # the certificate that proof verified under (local)
