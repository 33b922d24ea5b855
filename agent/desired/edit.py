"""Round-trip edits of network.yaml that keep the operator's comments and key order."""

from __future__ import annotations

import re

from ruamel.yaml.comments import CommentedMap

from agent.desired.schema import parse_state
from agent.errors import ConfigError
from agent.trust.encoding import dump_yaml, load_yaml


def service_name(image: str) -> str:
    """nginx -> nginx, ghcr.io/acme/web-app:1.2 -> web-app."""
    base = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    if not name:
        raise ConfigError(f"cannot derive a service name from {image!r}; pass --name")
    return name


def add_endomycete(data: bytes, name: str, image: str, replicas: int) -> bytes:
    doc = load_yaml(data)
    parse_state(data)  # only edit a file that is valid to begin with
    if doc.get("services") is None:  # absent, or `services:` left empty
        doc["services"] = CommentedMap()
    services = doc["services"]
    if services.get("endomycetes") is None or not services["endomycetes"]:
        services["endomycetes"] = CommentedMap()
    endos = services["endomycetes"]
    svc = endos.get(name)
    if svc is None:
        svc = CommentedMap()
        endos[name] = svc
    svc["image"] = image
    svc["replicas"] = replicas
    out = dump_yaml(doc)
    parse_state(out)
    return out


def remove_service(data: bytes, name: str) -> bytes:
    doc = load_yaml(data)
    for kind in ("endomycetes", "endophytes"):
        group = (doc.get("services") or {}).get(kind) or {}
        if name in group:
            del group[name]
            out = dump_yaml(doc)
            parse_state(out)
            return out
    raise ConfigError(f"no service named {name!r} in network.yaml")
