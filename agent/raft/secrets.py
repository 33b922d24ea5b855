"""Secrets derived from the network's Raft secret (held by sclerotia only).

Kept apart from agent/raft/store.py so the agent can derive them without loading pysyncobj.
"""

from __future__ import annotations

import hashlib

from agent.errors import ConfigError


def _derive(secret: bytes, purpose: bytes) -> str:
    if len(secret) < 16:
        raise ConfigError("Raft secret too short; it must come from `node bootstrap`")
    return hashlib.sha256(purpose + b"\0" + secret).hexdigest()


def raft_password(secret: bytes) -> str:
    return _derive(secret, b"mycelium-primary-v1")


def k3s_token(secret: bytes) -> str:
    """The K3s cluster token: every sclerotium derives the same one from the Raft secret;
    other nodes fetch it from a sclerotium over mutual TLS (/api/v1/k3s-token)."""
    return _derive(secret, b"mycelium-k3s-v1")


def secret_check(secret: bytes) -> str:
    """A one-way value of the Raft secret that every node gets at enrolment, so a node
    handed "the secret" at promotion can tell the real one from an attacker's."""
    return _derive(secret.strip(), b"mycelium-raft-check-v1")


def demote_proof(secret: bytes, name: str) -> str:
    """What the Raft leader sends with a demotion of `name`: only holders of the secret
    can make it, and the demoted node (a holder) checks it before stopping Raft."""
    return _derive(secret.strip(), b"mycelium-demote-v1\0" + name.encode())
