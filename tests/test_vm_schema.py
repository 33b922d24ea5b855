"""network.yaml endophyte fields (image, image_sha256, kernel, initrd, cmdline, ports):
typed values, and bad combinations refused with FILE:LINE:COL."""

from __future__ import annotations

import pytest

from agent.desired.model import Port
from agent.desired.schema import parse_state, problems
from agent.errors import SchemaError
from agent.trust.encoding import load_yaml

SHA = "ab" * 32
HEAD = "schema: 1\nnetwork: {name: a}\nservices:\n  endophytes:\n"


def problems_of(body: str) -> list[str]:
    return problems(load_yaml((HEAD + body).encode(), "n.yaml"), "n.yaml")


def test_direct_boot_and_disk_fields_typed():
    s = parse_state((HEAD + "    tiny:\n      kernel: /boot/k\n      initrd: /boot/i\n"
                     "      cmdline: console=ttyS0\n      memory_mb: 128\n"
                     "      ports: [{port: 8080, target: 80}]\n"
                     f"    db:\n      image: https://files.lan/db.qcow2\n"
                     f"      image_sha256: {SHA.upper()}\n").encode())
    tiny, db = s.endophytes
    assert (tiny.kernel, tiny.initrd, tiny.cmdline, tiny.image) == ("/boot/k", "/boot/i",
                                                                    "console=ttyS0", "")
    assert tiny.ports == (Port(8080, "tcp", 80),) and tiny.memory_mb == 128
    assert db.image_sha256 == SHA  # lower-cased


@pytest.mark.parametrize("body, where, needle", [
    ("    db: {cpus: 2}\n", "n.yaml:5:5", "needs an image (disk) or a kernel"),
    ("    db:\n      image: https://x/db.qcow2\n", "n.yaml:6:14", "needs image_sha256"),
    ("    db:\n      image: /i\n      image_sha256: nothex\n", "n.yaml:7:21",
     "64 hex digits"),
    (f"    db:\n      kernel: /k\n      image_sha256: {SHA}\n", "n.yaml:7:7",
     "image_sha256 without an image"),
    ("    db:\n      image: /i\n      cmdline: quiet\n", "n.yaml:7:7",
     "cmdline only applies with a kernel"),
    ("    db:\n      kernel: https://x/vmlinuz\n", "n.yaml:6:15", "must be a path"),
    ("    a: {kernel: /k, ports: [{port: 80}]}\n    b: {kernel: /k, ports: [{port: 80}]}\n",
     "n.yaml:6:29", "port 80/tcp is already forwarded to 'a'"),
    ("    a: {kernel: /k, memory_mb: 8}\n", "n.yaml:5:32", "between 16 and"),
])
def test_bad_endophytes_refused_with_position(body, where, needle):
    found = problems_of(body)
    assert any(p.startswith(where + ":") and needle in p for p in found), found


def test_port_clash_with_an_endomycete():
    text = (HEAD + "    a: {kernel: /k, ports: [{port: 53, protocol: udp}]}\n"
            "  endomycetes:\n    dns: {image: x, ports: [{port: 53, protocol: udp}]}\n"
            "    web: {image: y, ports: [{port: 53}]}\n")  # tcp: no clash
    with pytest.raises(SchemaError) as e:
        parse_state(text.encode())
    assert len(e.value.problems) == 1 and "53/udp is already forwarded to" in str(e.value)


def test_memory_over_what_any_node_has():
    nodes = ("schema: 1\nnetwork: {name: a}\nnodes:\n  - {name: s, role: sclerotium, "
             "memory_mb: 2048}\n  - {name: r, memory_mb: 1024}\n  - {name: h, role: hypha}\n"
             "services:\n  endophytes:\n")
    found = problems(load_yaml((nodes + "    db: {kernel: /k, memory_mb: 4096}\n"
                                "    ok: {kernel: /k, memory_mb: 2048}\n").encode(), "n.yaml"),
                     "n.yaml")
    assert found == ["n.yaml:9:33: endophyte 'db': memory_mb 4096 is more than any node has "
                     "(largest: 2048 on s)"]
    unknown = nodes.replace(", memory_mb: 1024", "")  # r does not say: it might have enough
    assert problems(load_yaml((unknown + "    db: {kernel: /k, memory_mb: 4096}\n").encode(),
                              "n.yaml"), "n.yaml") == []
