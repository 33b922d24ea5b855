"""Enrolment: a join token plus a CSR become a node certificate from the network CA.

Used by `mycelium cert issue` and by the node that holds the CA key when a joiner asks.
"""

from __future__ import annotations

from agent import pki
from agent.root import Root
from agent.signed import now_utc
from agent.tokens import verify_token


def issue_for_token(root: Root, ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes,
                    token: str, node_name: str, addresses: list[str]) -> bytes:
    tok = verify_token(token, root, now_utc(), node_name=node_name)
    return pki.issue_certificate(ca_key_pem, ca_cert_pem, csr_pem, node_name=node_name,
                                 role=tok.role, network_id=root.network_id,
                                 addresses=addresses)
