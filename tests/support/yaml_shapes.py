"""YAML documents that nest far past the depth cap, shared by the schema test and bench."""

from __future__ import annotations

from agent.trust.encoding import MAX_YAML_BYTES

# One per shape: each would nest far past the cap if read whole.
DEEP = {
    "block sequences": b"- " * (MAX_YAML_BYTES // 2 - 2) + b"x\n",
    "explicit keys": b"? " * (MAX_YAML_BYTES // 2 - 2) + b"x\n",  # refused at the 2nd "?"
    "indented mappings": "".join(f"{' ' * i}k:\n" for i in range(700)).encode(),
    "sequence of mappings": "".join(f"{' ' * (2 * i)}- a:\n" for i in range(500)).encode(),
    "flow sequences": b"[" * (MAX_YAML_BYTES // 2) + b"]" * (MAX_YAML_BYTES // 2 - 1),
    "flow mappings": b"{a: " * (MAX_YAML_BYTES // 5) + b"b",
}


def services_yaml(n: int, pad: int = 0, env: int = 0) -> bytes:
    """`n` endomycetes, image names `pad` characters longer, `env` variables each."""
    more = ", env: {" + ", ".join(f"V{k}: value{k}" for k in range(env)) + "}" if env else ""
    lines = ["schema: 1", "network: {name: local}", "services:", "  endomycetes:"]
    lines += [f"    s{i}: {{image: img{'x' * pad}:1, replicas: 1{more}}}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()
