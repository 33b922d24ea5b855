"""Secrets derived from the network's Raft secret (held by sclerotia only).

Kept apart from agent/primary.py so the agent can derive them without loading pysyncobj.
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
