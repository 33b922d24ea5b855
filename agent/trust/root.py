"""The root document: which Ed25519 keys speak for the network, and how many must agree.

Roles: `root` signs states, seed spores, tokens and the next root version; `admin` keys
(optional, delegated by root) may sign join tokens only. The network id is derived from
version 1 (name, keys, roles) and carried unchanged by every later version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.errors import DataError
from agent.trust.encoding import canonical
from agent.trust.keys import SigningKey, check_public_hex
from agent.trust.signed import format_time, parse_time, require

ROOT_TYPE = "mycelium/root"
ROLES = ("root", "admin")


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    network_name: str
    network_id: str
    version: int
    expires: datetime
    keys: dict[str, str]  # keyid -> public key hex
    roles: dict[str, Role]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Root:
        w = "root document"
        if d.get("_type") != ROOT_TYPE:
            raise DataError(f"{w}: _type must be {ROOT_TYPE!r}")
        keys_in = require(d, "keys", dict, w)
        keys = {}
        for kid, k in keys_in.items():
            if not isinstance(k, dict) or k.get("keytype") != "ed25519":
                raise DataError(f"{w}: key {kid[:12]} must be an ed25519 key")
            keys[kid] = check_public_hex(k.get("public"), f"{w}: key {kid[:12]}")
        roles = {}
        for name, r in require(d, "roles", dict, w).items():
            if not isinstance(r, dict):
                raise DataError(f"{w}: role {name!r} must be an object")
            ids = require(r, "keyids", list, f"{w} role {name}")
            thr = require(r, "threshold", int, f"{w} role {name}")
            if not all(isinstance(i, str) and i in keys for i in ids):
                raise DataError(f"{w}: role {name!r} lists a key id not in 'keys'")
            if len(set(ids)) != len(ids):
                raise DataError(f"{w}: role {name!r} lists a key id twice")
            if ids and not 1 <= thr <= len(ids):
                raise DataError(f"{w}: role {name!r} threshold {thr} is not in 1..{len(ids)}")
            roles[name] = Role(tuple(ids), thr)
        if "root" not in roles or not roles["root"].keyids:
            raise DataError(f"{w}: needs a non-empty 'root' role")
        known = {"_type", "network_name", "network_id", "version", "expires", "keys", "roles"}
        return cls(
            network_name=require(d, "network_name", str, w),
            network_id=require(d, "network_id", str, w),
            version=require(d, "version", int, w),
            expires=parse_time(d.get("expires"), f"{w} expires"),
            keys=keys,
            roles=roles,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "_type": ROOT_TYPE,
            "network_name": self.network_name,
            "network_id": self.network_id,
            "version": self.version,
            "expires": format_time(self.expires),
            "keys": {k: {"keytype": "ed25519", "public": v} for k, v in self.keys.items()},
            "roles": {n: {"keyids": list(r.keyids), "threshold": r.threshold}
                      for n, r in self.roles.items()},
        }

    def role(self, name: str) -> Role:
        return self.roles.get(name, Role((), 1))


def derive_network_id(network_name: str, keys: dict[str, str], roles: dict[str, Role]) -> str:
    """Hash of version 1's identity fields: random keys make it unique per network."""
    basis = {"network_name": network_name, "keys": keys,
             "roles": {n: [list(r.keyids), r.threshold] for n, r in roles.items()}}
    return hashlib.sha256(canonical(basis)).hexdigest()[:32]


def new_root(network_name: str, root_keys: list[SigningKey], threshold: int,
             expires: datetime, admin_keys: list[SigningKey] | None = None,
             version: int = 1, network_id: str | None = None) -> Root:
    admin_keys = admin_keys or []
    keys = {k.keyid: k.public_hex for k in root_keys + admin_keys}
    roles = {"root": Role(tuple(k.keyid for k in root_keys), threshold)}
    if admin_keys:
        roles["admin"] = Role(tuple(k.keyid for k in admin_keys), 1)
    nid = network_id or derive_network_id(network_name, keys, roles)
    return Root(network_name, nid, version, expires, keys, roles)
