"""A node's data directory: its key and certificate, the trust it holds, what it accepted.

Layout (all written crash-safely):
  identity.json          node name, role, network id, listen address
  node.key / node.crt    this node's TLS identity (key 0600), issued by the network CA
  ca.crt                 the network CA (checked against the root's ca_sha256)
  roots/N.root.json      the root chain this node trusts (version 1 is the anchor)
  state/                 highest accepted envelope and version (agent/statefile.py)
  peers.json             last known members, to rejoin after a restart without a token
  sclerotium/            ca.key and raft.secret, only on sclerotia (they enrol joiners)
  k3s.token              the K3s cluster token, on K3s agent nodes (fetched from a sclerotium)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.desired import DesiredState
from agent.envelope import Envelope
from agent.errors import ConfigError
from agent.root import Root
from agent.serial import dump_json, load_json_object
from agent.signed import now_utc
from agent.statefile import VersionStore, atomic_write, read_root_chain
from agent.trust import verify_root_chain

PRIVATE = 0o600


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    role: str
    network_id: str
    listen: str


@dataclass(frozen=True)
class NodeDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    key = property(lambda self: self.path / "node.key")
    crt = property(lambda self: self.path / "node.crt")
    ca_crt = property(lambda self: self.path / "ca.crt")
    roots = property(lambda self: self.path / "roots")
    identity_json = property(lambda self: self.path / "identity.json")
    peers_json = property(lambda self: self.path / "peers.json")
    sclerotium_dir = property(lambda self: self.path / "sclerotium")
    ca_key = property(lambda self: self.path / "sclerotium" / "ca.key")
    raft_secret = property(lambda self: self.path / "sclerotium" / "raft.secret")
    raft_members = property(lambda self: self.path / "sclerotium" / "raft-members.json")
    raft_dir = property(lambda self: self.path / "raft")  # pysyncobj journal and dump
    placement_json = property(lambda self: self.path / "placement.json")  # last one seen
    k3s_token = property(lambda self: self.path / "k3s.token")  # K3s agents: from a sclerotium

    @property
    def store(self) -> VersionStore:
        return VersionStore(self.path / "state")

    def held(self) -> tuple[Envelope, DesiredState] | None:
        """The accepted envelope and its state (verified when accepted), or None."""
        from agent.schema import parse_state
        from agent.signed import SignedDocument
        from agent.trust import MAX_ENVELOPE_BYTES

        data = self.store.envelope()
        if data is None:
            return None
        env = Envelope.from_dict(SignedDocument.from_bytes(data, "held envelope",
                                                           MAX_ENVELOPE_BYTES).signed)
        return env, parse_state(env.payload, f"state v{env.version}")

    def enrolled(self) -> bool:
        return self.crt.exists() and self.key.exists() and self.identity_json.exists()

    def identity(self) -> NodeIdentity:
        try:
            d = load_json_object(self.identity_json.read_bytes(), str(self.identity_json))
            return NodeIdentity(d["name"], d["role"], d["network_id"], d["listen"])
        except (OSError, KeyError) as e:
            raise ConfigError(f"{self.path} has no usable identity.json; join first with "
                              "--token or `mycelium join`") from e

    def write_identity(self, ident: NodeIdentity) -> None:
        atomic_write(self.identity_json, dump_json(ident.__dict__))

    def root(self, now: datetime | None = None) -> Root:
        chain = self.root_chain()
        if not chain:
            raise ConfigError(f"{self.roots} holds no root documents; join the network first")
        return verify_root_chain(chain[0], chain[1:], now or now_utc())

    def root_chain(self) -> list[bytes]:
        return read_root_chain(self.roots)

    def save_root_chain(self, chain: list[bytes]) -> None:
        self.roots.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(chain, start=1):
            atomic_write(self.roots / f"{i}.root.json", data)

    def save_credentials(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.key, key_pem, PRIVATE)
        atomic_write(self.ca_crt, ca_pem)
        atomic_write(self.crt, cert_pem)

    def save_sclerotium_secrets(self, ca_key_pem: bytes, raft_secret: bytes) -> None:
        self.sclerotium_dir.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self.ca_key, ca_key_pem, PRIVATE)
        atomic_write(self.raft_secret, raft_secret, PRIVATE)

    def peers(self) -> list[str]:
        if not self.peers_json.exists():
            return []
        try:
            return [p for p in json.loads(self.peers_json.read_text()) if isinstance(p, str)]
        except (ValueError, TypeError):
            return []

    def save_peers(self, peers: list[str]) -> None:
        atomic_write(self.peers_json, dump_json(sorted(set(peers))))
