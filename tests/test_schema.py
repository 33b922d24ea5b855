"""network.yaml: every bad input refused with line:col, comments kept by edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.edit import add_endomycete, remove_service
from agent.errors import SchemaError, TooLargeError, YamlError
from agent.schema import parse_state, render_network_yaml

EXAMPLES = sorted((Path(__file__).parent.parent / "configs" / "examples").glob("*.yaml"))
GOOD = b"schema: 1\nnetwork:\n  name: home\n"


def test_template_validates():
    s = parse_state(render_network_yaml("home"))
    assert s.network == "home" and s.spores.latent.fanout == 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path: Path):
    parse_state(path.read_bytes(), str(path))


def test_examples_exist():
    assert len(EXAMPLES) >= 2


def problems_of(text: str) -> list[str]:
    with pytest.raises(SchemaError) as e:
        parse_state(text.encode(), "n.yaml")
    return e.value.problems


def test_unknown_key_has_line_col_and_hint():
    p = problems_of("schema: 1\nnetwork:\n  name: home\nnodse: []\n")
    assert p == ["n.yaml:4:1: unknown key 'nodse' in ; did you mean 'nodes'?"] or \
        p[0].startswith("n.yaml:4:1: unknown key 'nodse'") and "did you mean 'nodes'" in p[0]


def test_all_problems_reported():
    p = problems_of("schema: 1\nnetwork:\n  name: home\nnodes:\n  - name: a\n    role: boss\n"
                    "  - name: b\n    labels: 5\nspores:\n  latent: {fanout: many}\n")
    assert len(p) == 3
    assert any("n.yaml:6:11" in x and "role must be one of" in x for x in p)
    assert any("labels must be a mapping" in x for x in p)
    assert any("fanout must be an integer" in x for x in p)


@pytest.mark.parametrize("text, needle", [
    ("schema: 1\nnetwork: {name: 5}\n", "must be a string"),
    ("schema: 1\n", "missing required key 'network'"),
    ("schema: 2\nnetwork: {name: a}\n", "between 1 and 1"),
    ("schema: 1\nnetwork: {name: a}\nnodes: [{name: a}, {name: a}]\n", "used twice"),
    ("schema: 1\nnetwork: {name: a}\nservices:\n  endomycetes:\n    web: {replicas: 2}\n",
     "needs an image"),
    ("schema: 1\nnetwork: {name: a}\ncomponents: {vm_runtime: NO}\n", "must be true or false"),
    ("schema: 1\nnetwork: {name: a}\nnodes: [{name: a, role: rhizomorph, mode: dynamic}]\n",
     "only applies"),
])
def test_wrong_types_and_values(text, needle):
    assert any(needle in p for p in problems_of(text)), problems_of(text)


def test_no_stays_a_string_under_yaml_1_2():
    s = parse_state(b"schema: 1\nnetwork: {name: NO}\n")
    assert s.network == "NO"


def test_yaml_1_1_directive_refused():
    with pytest.raises(YamlError, match="1:1: YAML directives"):
        parse_state(b"%YAML 1.1\n---\nschema: 1\nnetwork: {name: NO}\n")


def test_duplicate_keys_refused():
    with pytest.raises(YamlError, match=r"n.yaml:\d+:\d+"):
        parse_state(b"schema: 1\nnetwork: {name: a}\nnetwork: {name: b}\n", "n.yaml")


def test_alias_bomb_refused():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9)
                     + "]")
    with pytest.raises(YamlError, match="anchors and aliases"):
        parse_state("\n".join(lines).encode())


@pytest.mark.parametrize("doc", [
    b"x: " + b"[" * 5000 + b"]" * 5000,
    "".join(f"{' ' * (2 * i)}k{i}:\n" for i in range(5000)).encode() + b" " * 10000 + b"v\n",
])
def test_deep_nesting_refused(doc):
    with pytest.raises((YamlError, TooLargeError)):
        parse_state(doc)


def test_block_nesting_under_size_cap_refused():
    doc = "".join(f"{' ' * i}k{i}:\n" for i in range(300)).encode()
    with pytest.raises(YamlError, match="nested"):
        parse_state(doc)


def test_oversized_refused_before_parsing():
    with pytest.raises(TooLargeError, match="cap"):
        parse_state(GOOD + b"#" * (300 * 1024))


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['true']", "!foo bar",
                                 "!!binary aGVsbG8="])
def test_unknown_tags_refused(tag):
    with pytest.raises(YamlError, match="unknown tag"):
        parse_state(f"schema: 1\nnetwork:\n  name: {tag}\n".encode())


def test_deploy_keeps_comments_and_order():
    src = render_network_yaml("home")
    out = add_endomycete(src, "web", "nginx", 3)
    assert out.count(b"#") == src.count(b"#")
    keys = [line.split(b":")[0] for line in out.splitlines() if line and line[:1].isalpha()]
    assert keys == [b"schema", b"network", b"nodes", b"users", b"spores", b"components",
                    b"services", b"revoked"]
    s = parse_state(out)
    assert [(e.name, e.image, e.replicas) for e in s.endomycetes] == [("web", "nginx", 3)]
    out2 = add_endomycete(out, "web", "nginx:1.25", 5)
    assert [(e.image, e.replicas) for e in parse_state(out2).endomycetes] == [("nginx:1.25", 5)]
    assert parse_state(remove_service(out2, "web")).endomycetes == ()


def test_validate_and_deploy_cli(tmp_path: Path, capsys):
    f = tmp_path / "network.yaml"
    f.write_bytes(render_network_yaml("home"))
    assert main(["validate", str(f)]) == 0
    assert "ok (0 nodes, 0 services)" in capsys.readouterr().out
    assert main(["deploy", "--image", "ghcr.io/acme/web:1", "--replicas", "2", "--file",
                 str(f)]) == 0
    assert "service 'web'" in capsys.readouterr().out
    f.write_bytes(b"schema: 1\nnetwork: {name: a}\nusers: [{name: x, sudo: maybe}]\n")
    assert main(["validate", str(f)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{f}:3:") and "true or false" in out
