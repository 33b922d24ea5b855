"""Names from network.yaml that end up in file paths, hostnames and Kubernetes objects.

A service, node or VM name becomes `/etc/mycelium/kube/NAME.yaml`, a K3s manifest file
name, a hostname and a Kubernetes object name; a user name becomes an account and a
sudoers file. So they are DNS-1123 labels and POSIX user names, checked twice: by the
schema (agent/desired/schema.py, with line:col) and again here, where a path is built,
so a name that slipped past validation can never climb out of its folder.

Pure (no pyinfra), so the schema imports the same rules the recipes apply.
"""

from __future__ import annotations

import re

DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")

DNS_LABEL_RULE = ("lowercase letters, digits and '-', starting and ending with a letter or "
                  "digit, at most 63 characters")
POSIX_USER_RULE = ("lowercase letters, digits, '_' and '-', starting with a letter or '_', "
                   "at most 32 characters")


class UnsafeNameError(ValueError):
    """A name that must not become part of a path (recipes cannot import agent.errors)."""


def is_label(name: object) -> bool:
    return isinstance(name, str) and DNS_LABEL.match(name) is not None


def is_user(name: object) -> bool:
    return isinstance(name, str) and POSIX_USER.match(name) is not None


def safe_name(name: str, user: bool = False) -> str:
    """`name` unchanged if it is a DNS-1123 label (a POSIX user name with user=True)."""
    ok, rule = (is_user, POSIX_USER_RULE) if user else (is_label, DNS_LABEL_RULE)
    if not ok(name):
        raise UnsafeNameError(f"{name!r} is not a valid {'user ' if user else ''}name "
                              f"({rule}); refusing to build a path from it")
    return name


def name_path(folder: str, name: str, suffix: str = "", prefix: str = "",
              user: bool = False) -> str:
    """FOLDER/PREFIX+NAME+SUFFIX, only for a checked name, so the file stays in FOLDER."""
    return f"{folder.rstrip('/')}/{prefix}{safe_name(name, user)}{suffix}"
