"""Node names at the doors of the network: one DNS-1123 label, or a one-line refusal.

A node name becomes a certificate's CN and SAN, a key in the Primary registry, a file and
unit name on hosts, and a word in shell commands the recipes run. So it is refused, not
escaped. The rule itself lives in recipes/names.py (the recipes apply it where they build
paths and cannot import agent); this module turns it into the DataError every door (the
joining CLI, the enrolment server, `cert issue`, `node bootstrap`, pki) raises.
"""

from __future__ import annotations

from typing import TypeGuard

from agent.errors import DataError
from recipes.names import DNS_LABEL_RULE, is_label


def is_node_name(name: object) -> TypeGuard[str]:
    return is_label(name)


def check_node_name(name: object) -> str:
    """The name itself if it is a DNS label; else DataError saying what a name may be."""
    if is_node_name(name):
        return name
    shown = repr(name[:70] + "..." if isinstance(name, str) and len(name) > 70 else name)
    raise DataError(f"node name {shown} is not a DNS label: use {DNS_LABEL_RULE}")


# The operator's client certificate is named this (agent/authoring/identity.py); the
# routes only the operator may use (rollout pause/resume/abort) check for it, so no node
# may enrol under it.
OPERATOR = "operator"


def check_joiner_name(name: object) -> str:
    """A name a node may enrol under: a DNS label, and not the operator's."""
    name = check_node_name(name)
    if name == OPERATOR:
        raise DataError(f"node name {OPERATOR!r} is the operator's certificate: choose "
                        "another")
    return name
