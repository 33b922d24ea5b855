"""The operator's network directory: where each file lives, and how commands find it.

Found from `--network DIR`, else `$MYCELIUM_NETWORK`, else the current directory or the
nearest parent holding a `root.json` (as git finds its repository).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import ConfigError
from agent.statefile import read_root_chain
from agent.trust.keys import SigningKey
from agent.trust.root import Root
from agent.trust.rules import verify_root_chain


@dataclass(frozen=True)
class NetworkDir:
    path: Path

    @property
    def network_yaml(self) -> Path:
        return self.path / "network.yaml"

    @property
    def root_json(self) -> Path:
        """The current root version (what nodes are told to trust)."""
        return self.path / "root.json"

    @property
    def root_history(self) -> Path:
        """Every root version, `1.root.json` ... `N.root.json`: the chain nodes walk."""
        return self.path / "roots"

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def ca_crt(self) -> Path:
        return self.path / "ca.crt"

    @property
    def operator_key(self) -> Path:
        return self.path / "operator.key"

    @property
    def operator_crt(self) -> Path:
        return self.path / "operator.crt"

    @property
    def spore_json(self) -> Path:
        return self.path / "spore.json"

    @property
    def state_dir(self) -> Path:
        """Operator-side bookkeeping: the last signed version."""
        return self.path / ".mycelium"

    def root_chain(self) -> list[bytes]:
        chain = read_root_chain(self.root_history)
        if not chain:
            raise ConfigError(f"{self.root_history} holds no root versions; is {self.path} "
                              "a network made by `mycelium init`?")
        return chain

    def root(self, now: datetime | None = None) -> Root:
        chain = self.root_chain()
        return verify_root_chain(chain[0], chain[1:], now or datetime.now(UTC))

    def save_key(self, key: SigningKey) -> Path:
        """Write with mode 0600 from the start: the key never exists world-readable."""
        path = self.keys_dir / f"root-{key.keyid[:12]}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_pem())
            f.flush()
            os.fsync(f.fileno())
        return path

    @staticmethod
    def load_key(path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read signing key {path}: {e.strerror}") from e
        return SigningKey.from_pem(data, str(path))

    def signing_keys(self, root: Root, role: str = "root") -> list[SigningKey]:
        """The private keys present here for `role` (some may be held elsewhere)."""
        wanted = set(root.role(role).keyids)
        keys = []
        for p in sorted(self.keys_dir.glob("*.key")):
            k = self.load_key(p)
            if k.keyid in wanted:
                keys.append(k)
        return keys


def find_network(explicit: str | None = None, cwd: Path | None = None) -> NetworkDir:
    if explicit:
        p = Path(explicit)
        if not (p / "root.json").exists():
            raise ConfigError(f"{p} is not a network directory (no root.json); "
                              "create one with `mycelium init`")
        return NetworkDir(p)
    env = os.environ.get("MYCELIUM_NETWORK")
    if env:
        return find_network(env)
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "root.json").exists() and (d / "roots").is_dir():
            return NetworkDir(d)
    raise ConfigError("no network directory here or above; pass --network DIR, set "
                      "MYCELIUM_NETWORK, or run `mycelium init`")
