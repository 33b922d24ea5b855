"""network.yaml: every bad input refused with line:col, comments kept by edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.authoring.identity import render_network_yaml
from agent.cli import main
from agent.desired.edit import add_endomycete, remove_service
from agent.desired.schema import parse_checked, parse_state
from agent.errors import SchemaError, TooLargeError, YamlError
from agent.trust import encoding
from agent.trust.encoding import MAX_YAML_BYTES, MAX_YAML_DEPTH, dump_yaml, load_yaml
from recipes.names import UnsafeNameError, name_path, safe_name
from support.yaml_shapes import DEEP

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
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{f}:3:") and "true or false" in err  # all on stderr


# --- issue 12: odd YAML ends in one line, names are checked, manifests warned about ----

def test_list_as_key_refused_with_line_col():
    with pytest.raises(YamlError, match=r"n.yaml:1:3: a list used as a key"):
        parse_state(b"[ [[a]]: 1 ]\n", "n.yaml")
    with pytest.raises(YamlError, match=r"n.yaml:2:3: a mapping used as a key"):
        parse_state(b"schema: 1\n? {a: b}\n: c\n", "n.yaml")


NAME_COMMENT = b"schema: 1\nnetwork:\n  name:   # the name\n    t\n\n\n"


def test_comment_after_key_then_blank_lines_loads_and_keeps_comments():
    assert parse_state(NAME_COMMENT).network == "t"  # ruamel: "overlap in comment"
    out = dump_yaml(load_yaml(NAME_COMMENT + b"nodes: [] # none yet\n"))
    assert b"# the name" in out and b"# none yet" in out
    assert parse_state(add_endomycete(NAME_COMMENT, "web", "nginx", 1)).network == "t"




@pytest.mark.parametrize("doc", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_refused_by_depth_after_a_bounded_number_of_events(doc, monkeypatch):
    """The refusal names the depth, and the parser is stopped after about MAX_YAML_DEPTH
    events whatever the input's size: an operation count, not a clock (tests/bench/
    bench_yaml.py prints the times)."""
    assert len(doc) <= MAX_YAML_BYTES
    events = []
    real = encoding._Parser.get_event
    monkeypatch.setattr(encoding._Parser, "get_event", lambda self: events.append(1)
                        or real(self))
    with pytest.raises(YamlError, match=rf"nested deeper than {MAX_YAML_DEPTH} levels|"
                       "a mapping used as a key"):
        parse_state(doc)
    assert len(events) <= 3 * MAX_YAML_DEPTH


def test_nesting_at_the_cap_still_loads():
    doc = b"schema: 1\nnetwork: {name: a}\nrevoked: " + b"[" * 20 + b"]" * 20 + b"\n"
    with pytest.raises(SchemaError, match="revoked"):  # loaded, then refused by the schema
        parse_state(doc)


def problems_text(text: bytes) -> str:
    with pytest.raises((SchemaError, YamlError)) as e:
        parse_state(text, "n.yaml")
    return str(e.value)


@pytest.mark.parametrize("text, shown", [
    (b"!!str a: 1\n", "unknown key 'a' at the top level"),
    (b"schema: 1\nnetwork: {name: !!str a}\nspores: {latent: {fanout: {a: 1}}}\n",
     "spores.latent.fanout must be an integer, got mapping {'a': 1}"),
    (b"schema: 1\nnetwork: {name: a}\nnodes: [{name: a, role: [1, 2]}]\n",
     "nodes[0].role must be one of sclerotium, rhizomorph, hypha, got list [1, 2]"),
    (b"- a\n- b\n", "n.yaml:1:1: the document must be a mapping with keys schema, network"),
    (b"", "n.yaml:1:1: the document is empty"),
    (b"# only a comment\n", "the document is empty"),
    (b"schema: 1\nnetwork: {name: a}\nservices: {endomycetes: {5: {image: x}}}\n",
     "services.endomycetes: key 5 must be a name"),
])
def test_messages_show_what_the_user_wrote(text, shown):
    msg = problems_text(text)
    assert shown in msg, msg
    for internal in ("TaggedScalar", "ordereddict", "Commented", "(", ":  "):
        assert internal not in msg.replace("(schema", ""), msg


def test_tagged_str_is_a_plain_string():
    s = parse_state(b"schema: 1\nnetwork: {name: !!str net}\nnodes: [{name: !!str n1}]\n")
    assert s.network == "net" and type(s.network) is str and s.nodes[0].name == "n1"


BAD_NAMES = ["../../../etc/cron.d/evil", "Has Space", "UPPER", "-lead", "trail-", "a_b",
             "a.b", "x" * 64, ""]


def _with_node(name: str) -> bytes:
    return f"schema: 1\nnetwork: {{name: a}}\nnodes:\n  - name: {name!r}\n".encode()


def _with_service(kind: str, name: str) -> bytes:
    return (f"schema: 1\nnetwork: {{name: a}}\nservices:\n  {kind}:\n    {name!r}:\n"
            "      image: x\n").encode()


def _with_user(name: str) -> bytes:
    return f"schema: 1\nnetwork: {{name: a}}\nusers:\n  - name: {name!r}\n".encode()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_refused_with_line_col(name):
    assert "n.yaml:4:11: nodes[0].name: " in problems_text(_with_node(name))
    for kind in ("endomycetes", "endophytes"):
        msg = problems_text(_with_service(kind, name))
        assert f"n.yaml:5:5: services.{kind}: " in msg and "not a valid name" in msg, msg
    with pytest.raises(UnsafeNameError, match="refusing to build a path"):
        name_path("/etc/mycelium/kube", name, ".yaml")


@pytest.mark.parametrize("name", ["../../../etc/cron.d/evil", "Has Space", "9lives", "a" * 33,
                                  "root:x", ""])
def test_bad_user_names_refused(name):
    assert "n.yaml:4:11: users[0].name: " in problems_text(_with_user(name))
    with pytest.raises(UnsafeNameError):
        name_path("/etc/sudoers.d", name, prefix="mycelium-", user=True)


@pytest.mark.parametrize("name", ["web", "n1", "node-" + "0" * 32, "9x", "a" * 63])
def test_good_names_pass(name):
    parse_state(_with_node(name))
    parse_state(_with_service("endomycetes", name))
    assert name_path("/k", name, ".yaml") == f"/k/{name}.yaml"
    assert safe_name("_svc-1", user=True) == "_svc-1"


def test_validate_cli_refuses_a_path_name(tmp_path: Path, capsys):
    f = tmp_path / "network.yaml"
    f.write_bytes(_with_service("endomycetes", "../../../etc/cron.d/evil"))
    assert main(["validate", str(f)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"{f}:5:5: services.endomycetes: '../../../etc/cron.d/evil'" in err


def test_recipes_guard_paths_at_the_point_of_use():
    from recipes import podman

    assert podman.manifest_path("web") == "/etc/mycelium/kube/web.yaml"
    for bad in ("../../../etc/cron.d/evil", "Has Space"):
        with pytest.raises(UnsafeNameError):
            podman.manifest_path(bad)


STATEFUL = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
---
apiVersion: v1
kind: Service
metadata: {name: db}
"""


def _manifest_state(runtime: str, replicas: int, manifest: str = STATEFUL) -> bytes:
    body = "".join(f"        {line}\n" for line in manifest.splitlines())
    return (f"schema: 1\nnetwork: {{name: a}}\nnodes:\n  - {{name: n1, runtime: {runtime}}}\n"
            f"services:\n  endomycetes:\n    db:\n      replicas: {replicas}\n"
            f"      manifest: |\n{body}").encode()


def test_manifest_kinds_podman_cannot_run_are_warned_about():
    _, warnings = parse_checked(_manifest_state("podman", 3), "n.yaml")
    assert len(warnings) == 2, warnings
    assert all(w.startswith("n.yaml:9:17: warning: services.endomycetes.db.manifest: ")
               for w in warnings)
    assert "podman cannot run a StatefulSet" in warnings[0] and "n1" in warnings[0]
    assert "podman cannot run a ClusterRole" in warnings[1]
    assert parse_checked(_manifest_state("k3s", 3))[1] == []  # K3s runs every kind


def test_manifest_replicas_disagreeing_with_the_service_are_warned_about(tmp_path, capsys):
    _, warnings = parse_checked(_manifest_state("k3s", 1), "n.yaml")
    assert len(warnings) == 1
    assert "StatefulSet 'db' asks for replicas: 3 but the service has replicas: 1" in warnings[0]
    f = tmp_path / "network.yaml"
    f.write_bytes(_manifest_state("podman", 2))
    assert main(["validate", str(f)]) == 0  # warnings do not fail validation
    out, err = capsys.readouterr()
    assert "ok (1 nodes, 1 services)" in out and err.count("warning:") == 3


def test_generated_and_matching_manifests_are_quiet():
    ok = "kind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n"
    assert parse_checked(_manifest_state("podman", 2, ok))[1] == []
    assert parse_checked(GOOD + b"services:\n  endomycetes:\n    web: {image: nginx}\n")[1] == []


def test_unreadable_manifest_is_a_warning():
    _, warnings = parse_checked(_manifest_state("k3s", 1, "a: [b\n"))
    assert len(warnings) == 1 and "the manifest cannot be read" in warnings[0]


def _example_blocks(lines: list[str]) -> list[range]:
    """Runs of comment lines right under a YAML line: the template's commented examples."""
    blocks, i = [], 0
    while i < len(lines):
        j = i
        if i and lines[i].lstrip().startswith("#  ") and lines[i - 1].strip() \
                and not lines[i - 1].lstrip().startswith("#"):
            while j < len(lines) and lines[j].lstrip().startswith("#"):
                j += 1
            blocks.append(range(i, j))
        i = max(j, i + 1)
    return blocks


def _uncomment(lines: list[str], blocks: list[range]) -> bytes:
    out = list(lines)
    for b in blocks:
        for k in b:
            out[k] = out[k].replace("#", "", 1)
    return ("\n".join(out) + "\n").encode()


def test_template_examples_uncomment_cleanly():
    lines = render_network_yaml("home").decode().splitlines()
    blocks = _example_blocks(lines)
    assert len(blocks) == 4  # nodes, users, endomycetes, endophytes
    for b in blocks:
        parse_state(_uncomment(lines, [b]), f"template lines {b.start + 1}-{b.stop}")
    s = parse_state(_uncomment(lines, blocks))
    assert [n.name for n in s.nodes] == ["pi1", "nuc1"] and s.users[0].name == "admin"
    assert [e.name for e in s.endomycetes] == ["web"] and [e.name for e in s.endophytes] == ["db"]


def test_empty_sections_are_empty():
    s = parse_state(GOOD + b"nodes:\nusers:\nservices:\n  endomycetes:\n  endophytes:\n")
    assert s.nodes == () and s.users == () and s.endomycetes == ()
    assert "nodes[0] must be a mapping, got null" in problems_text(GOOD + b"nodes: [null]\n")
