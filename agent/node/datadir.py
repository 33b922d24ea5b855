"""A node's data directory: its key and certificate, the trust it holds, what it accepted.

Layout (all written crash-safely):
  identity.json          node name, role, network id, listen address
  node.key / node.crt    this node's TLS identity (key 0600), issued by the network CA
  ca.crt                 the network CA (checked against the root's ca_sha256)
  roots/N.root.json      the root chain this node trusts (version 1 is the anchor)
  state/                 highest accepted envelope and version (agent/statefile.py)
  peers.json             last known members, to rejoin after a restart without a token
  sclerotium/            ca.key, raft.secret and raft-members.json, only on sclerotia
  raft/                  the Raft journal and dump (pysyncobj), only while Raft runs
  placement.json         the last placement a Raft leader committed that this node saw
  k3s.token              the K3s cluster token, on K3s agent nodes (fetched from a sclerotium)
  api.sock               the agent's read-only API for the node console (0600, no TLS)
  releases/<sha256>.tar  release artifacts this node holds and serves (agent/node/releases.py)
  health.json            ready, gossiping, apply status: for the release watchdog only
  content/<id>.yaml      the contents of states this node held (verified before they were
                         kept), so a staged change can apply the previous one
                         (agent/desired/staged.py); a copy whose id does not match is removed

Every file is read and written through a named method here, so its path, its mode and
what an unreadable copy means are decided once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.desired.model import DesiredState
from agent.desired.staged import content_id
from agent.errors import CertificateError, ConfigError, DataError
from agent.raft.secrets import secret_check
from agent.statefile import VersionStore, atomic_write, read_root_chain
from agent.trust.encoding import dump_json, load_json_object
from agent.trust.envelope import Envelope
from agent.trust.pki import fingerprint, issued_by, key_matches
from agent.trust.root import Root
from agent.trust.rules import verify_root_chain
from agent.trust.signed import now_utc
from agent.tuning import PRIVATE_DIR, PRIVATE_FILE


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
    api_socket = property(lambda self: self.path / "api.sock")
    sclerotium_dir = property(lambda self: self.path / "sclerotium")
    ca_key = property(lambda self: self.path / "sclerotium" / "ca.key")
    raft_secret = property(lambda self: self.path / "sclerotium" / "raft.secret")
    raft_members = property(lambda self: self.path / "sclerotium" / "raft-members.json")
    # every node: checks a Raft secret handed over at promotion (agent/raft/secrets.py)
    raft_check = property(lambda self: self.path / "raft.check")
    raft_dir = property(lambda self: self.path / "raft")  # pysyncobj journal and dump
    placement_json = property(lambda self: self.path / "placement.json")  # last one seen
    k3s_token = property(lambda self: self.path / "k3s.token")  # K3s agents: from a sclerotium

    @property
    def store(self) -> VersionStore:
        return VersionStore(self.path / "state")

    def held(self) -> tuple[Envelope, DesiredState] | None:
        """The accepted envelope and its state (verified when accepted), or None."""
        from agent.desired.schema import parse_state
        from agent.trust.rules import MAX_ENVELOPE_BYTES
        from agent.trust.signed import SignedDocument

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
        try:
            return verify_root_chain(chain[0], chain[1:], now or now_utc())
        except DataError as e:  # torn or corrupt: say where (the files are not named)
            raise ConfigError(f"the root chain in {self.roots} is refused: {e}; restore it "
                              "or enrol the node again") from e

    def root_chain(self) -> list[bytes]:
        return read_root_chain(self.roots)

    def save_root_chain(self, chain: list[bytes]) -> None:
        self.roots.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(chain, start=1):
            atomic_write(self.roots / f"{i}.root.json", data)

    def save_credentials(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        atomic_write(self.key, key_pem, PRIVATE_FILE)
        atomic_write(self.ca_crt, ca_pem)
        atomic_write(self.crt, cert_pem)

    def save_sclerotium_secrets(self, ca_key_pem: bytes, raft_secret: bytes) -> None:
        self.sclerotium_dir.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        atomic_write(self.ca_key, ca_key_pem, PRIVATE_FILE)
        self.write_raft_secret(raft_secret)

    # --- the Raft side (sclerotia and promoted rhizomorphs) ---------------------------

    def has_raft_secret(self) -> bool:
        return self.raft_secret.exists()

    def read_raft_secret(self) -> bytes:
        """The secret as stored (callers that need it bare strip it)."""
        return self.raft_secret.read_bytes()

    def write_raft_secret(self, secret: bytes) -> None:
        self.sclerotium_dir.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        atomic_write(self.raft_secret, secret, PRIVATE_FILE)
        self.write_raft_check(secret_check(secret))

    def read_raft_check(self) -> str | None:
        """The one-way value of the network's Raft secret, None if this node never got it."""
        try:
            return self.raft_check.read_text().strip() or None
        except FileNotFoundError:
            return None

    def check_tls_files(self, root: Root) -> None:
        """At start: ca.crt is the CA the root names, node.crt is issued by it, node.key is
        its key and, on a sclerotium, ca.key (which signs new certificates) is ca.crt's
        key. A flipped byte in any of them can still load, and the node would then start
        and fail every handshake in silence. Each file is read once."""
        expected = root.extra.get("ca_sha256")
        try:
            ca, crt = self.ca_crt.read_bytes(), self.crt.read_bytes()
            if isinstance(expected, str) and fingerprint(ca) != expected:
                raise ConfigError(f"{self.ca_crt} is not the CA the root names (ca_sha256); "
                                  "restore it from the network directory or another node")
            if not issued_by(crt, ca):
                raise ConfigError(f"{self.crt} is not issued by {self.ca_crt}; restore it "
                                  "from a backup or enrol the node again")
            if not key_matches(self.key.read_bytes(), crt):
                raise ConfigError(f"{self.key} is not the key of {self.crt}; restore it "
                                  "from a backup or enrol the node again")
        except CertificateError as e:  # loaded by OpenSSL but refused by cryptography: rare
            raise ConfigError(f"ca.crt, node.crt or node.key in {self.path} is corrupt ({e}); "
                              "restore them or enrol the node again") from e
        if not self.ca_key.exists():
            return
        try:
            ok = key_matches(self.ca_key.read_bytes(), ca)
        except DataError as e:
            raise ConfigError(f"{self.ca_key} is unreadable or corrupt ({e}); restore it "
                              "from a backup or another sclerotium") from e
        if not ok:
            raise ConfigError(f"{self.ca_key} is not the key of {self.ca_crt}; restore it "
                              "from a backup or another sclerotium")

    def check_raft_secret(self) -> None:
        """At start: a held Raft secret must match the check value (a torn or flipped
        copy of either would otherwise cut this node off its Raft peers in silence)."""
        if not self.has_raft_secret():
            return
        check = self.read_raft_check()
        if check is not None and check != secret_check(self.read_raft_secret()):
            raise ConfigError(f"{self.raft_secret} does not match {self.raft_check}: one of "
                              "them is corrupt; restore it from a backup, or remove both "
                              "and have the leader promote this node again")

    def write_raft_check(self, check: str) -> None:
        atomic_write(self.raft_check, check.encode(), PRIVATE_FILE)

    def read_raft_members(self) -> list[str] | None:
        """The Raft members last saved; None when missing or not a list of addresses."""
        try:
            saved = json.loads(self.raft_members.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(saved, list) and all(isinstance(a, str) for a in saved):
            return saved
        return None

    def write_raft_members(self, members: list[str]) -> None:
        atomic_write(self.raft_members, dump_json(members), PRIVATE_FILE)

    def forget_raft(self) -> None:
        """Demotion: the secret, the saved members and the journal go."""
        for f in (self.raft_secret, self.raft_members):
            f.unlink(missing_ok=True)
        shutil.rmtree(self.raft_dir, ignore_errors=True)

    # --- what this node acts on -------------------------------------------------------

    def read_placement(self) -> tuple[int, dict[str, Any]] | None:
        """The placement last adopted, as committed: (version, placement); None when
        missing or unreadable (our own file: a damaged one means none)."""
        try:
            d = json.loads(self.placement_json.read_text())
            version, placement = int(d["version"]), d["placement"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (version, placement) if isinstance(placement, dict) else None

    def write_placement(self, version: int, placement: dict[str, Any]) -> None:
        atomic_write(self.placement_json, dump_json({"version": version,
                                                     "placement": placement}))

    content_dir = property(lambda self: self.path / "content")

    def write_content(self, cid: str, payload: bytes) -> None:
        """Keep a verified state's content (`cid`: its content_id) for a staged change."""
        self.content_dir.mkdir(exist_ok=True, mode=PRIVATE_DIR)
        path = self.content_dir / f"{cid}.yaml"
        if not path.exists():
            atomic_write(path, payload, PRIVATE_FILE)

    def read_content(self, cid: str) -> bytes | None:
        """A kept content, or None when missing or not what its name says (torn, rotten:
        then it is removed, and the caller says so)."""
        path = self.content_dir / f"{cid}.yaml"
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if content_id(data) != cid:
            path.unlink(missing_ok=True)
            raise DataError(f"{path} does not match its name (torn or rotten); removed")
        return data

    def check_contents(self) -> list[str]:
        """Remove kept contents that do not match their names; what was removed, as
        messages naming the files."""
        said = []
        for path in sorted(self.content_dir.glob("*.yaml")):
            try:
                self.read_content(path.stem)
            except DataError as e:
                said.append(str(e))
        return said

    def prune_contents(self, keep: set[str], newest: int = 3) -> None:
        """Drop kept contents but those in `keep` and the `newest` others."""
        files = sorted(self.content_dir.glob("*.yaml"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for path in [p for p in files if p.stem not in keep][newest:]:
            path.unlink(missing_ok=True)

    def read_k3s_token(self) -> str:
        """The K3s token fetched from a sclerotium, or "" when none was."""
        f = self.k3s_token
        return f.read_text().strip() if f.exists() else ""

    def write_k3s_token(self, token: str) -> None:
        atomic_write(self.k3s_token, token.encode(), PRIVATE_FILE)

    def peers(self) -> list[str]:
        if not self.peers_json.exists():
            return []
        try:
            return [p for p in json.loads(self.peers_json.read_text()) if isinstance(p, str)]
        except (ValueError, TypeError):
            return []

    def save_peers(self, peers: list[str]) -> None:
        atomic_write(self.peers_json, dump_json(sorted(set(peers))))
