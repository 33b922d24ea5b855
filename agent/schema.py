"""network.yaml schema v1: validation with line and column, then typed DesiredState.

The spec is data (SCHEMA below); one walker checks a round-trip-loaded document against
it and collects EVERY problem as "FILE:LINE:COL: message", with did-you-mean hints for
unknown keys. Only a document with no problems is turned into agent/desired.py classes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agent import desired as d
from agent.errors import SchemaError
from agent.serial import load_yaml

TEMPLATES = Path(__file__).resolve().parent.parent / "configs" / "templates"


@dataclass(frozen=True)
class S:
    """One value's rule: kind is str|int|float|bool|enum|map|list|obj|strmap."""

    kind: str
    required: bool = False
    fields: dict[str, S] = field(default_factory=dict)  # obj
    item: S | None = None  # list items / map values
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None


def obj(required: bool = False, **fields: S) -> S:
    return S("obj", required, fields)


NAME = S("str", True)
LABELS = S("strmap")
PORT = obj(port=S("int", True, lo=1, hi=65535), protocol=S("enum", choices=("tcp", "udp")),
           target=S("int", lo=1, hi=65535))
SCHEMA = obj(
    schema=S("int", True, lo=1, hi=1),
    network=obj(True, name=NAME),
    nodes=S("list", item=obj(
        name=NAME, role=S("enum", choices=("sclerotium", "rhizomorph", "hypha")),
        mode=S("enum", choices=("dedicated", "dynamic")), labels=LABELS,
        addresses=S("list", item=S("str")), runtime=S("enum", choices=("k3s", "podman")))),
    users=S("list", item=obj(name=NAME, ssh_keys=S("list", item=S("str")), sudo=S("bool"))),
    spores=obj(
        primary=obj(target_sclerotia=S("int", lo=1, hi=9)),
        seed=obj(locations=S("list", item=S("str"))),
        latent=obj(interval_ms=S("int", lo=20, hi=60000), fanout=S("int", lo=1, hi=16))),
    components=obj(
        k3s=obj(binary=S("str"), binary_sha256=S("str"), images=S("str"),
                images_sha256=S("str")),
        vm_runtime=S("bool"), ram_replication=S("bool")),
    services=obj(
        endomycetes=S("map", item=obj(
            image=S("str"), replicas=S("int", lo=0, hi=1000), ports=S("list", item=PORT),
            env=S("strmap"), manifest=S("str"), labels=LABELS)),
        endophytes=S("map", item=obj(
            image=S("str", True), cpus=S("int", lo=1, hi=256),
            memory_mb=S("int", lo=16, hi=1 << 20), backups=S("int", lo=0, hi=8),
            replication_interval_ms=S("int", lo=10, hi=3_600_000),
            throttle=obj(curve=S("enum", choices=("linear", "exponential", "custom")),
                         threshold=S("float", lo=0, hi=1),
                         points=S("list", item=S("list", item=S("float"))),
                         emergency_pause=S("bool")),
            labels=LABELS))),
    revoked=S("list", item=S("str")),
)


class _Walker:
    def __init__(self, what: str) -> None:
        self.what = what
        self.problems: list[str] = []

    def err(self, pos: tuple[int, int] | None, msg: str) -> None:
        where = f"{self.what}:{pos[0] + 1}:{pos[1] + 1}" if pos else self.what
        self.problems.append(f"{where}: {msg}")

    def check(self, v: Any, s: S, path: str, pos: tuple[int, int] | None) -> None:
        k = s.kind
        if k == "obj":
            if not isinstance(v, dict):
                return self.err(pos, f"{path} must be a mapping")
            for key in v:
                if key not in s.fields:
                    hint = difflib.get_close_matches(str(key), s.fields, 1)
                    more = f"; did you mean {hint[0]!r}?" if hint else \
                        f"; expected one of: {', '.join(s.fields)}"
                    self.err(_key_pos(v, key), f"unknown key {key!r} in {path}{more}")
            for name, sub in s.fields.items():
                if name in v:
                    self.check(v[name], sub, f"{path}.{name}".lstrip("."), _val_pos(v, name))
                elif sub.required:
                    self.err(pos, f"{path or 'document'} is missing required key {name!r}")
        elif k in ("map", "strmap"):
            if not isinstance(v, dict):
                return self.err(pos, f"{path} must be a mapping")
            for key, val in v.items():
                if not isinstance(key, str):
                    self.err(_key_pos(v, key), f"{path}: keys must be strings")
                if k == "strmap":
                    if not isinstance(val, str | int | float) or isinstance(val, bool):
                        self.err(_val_pos(v, key), f"{path}.{key} must be a string")
                else:
                    self.check(val, s.item, f"{path}.{key}", _val_pos(v, key))
        elif k == "list":
            if not isinstance(v, list):
                return self.err(pos, f"{path} must be a list")
            for i, item in enumerate(v):
                self.check(item, s.item, f"{path}[{i}]", _item_pos(v, i) or pos)
        elif k == "str":
            if not isinstance(v, str):
                self.err(pos, f"{path} must be a string, got {_tname(v)}")
        elif k == "bool":
            if not isinstance(v, bool):
                self.err(pos, f"{path} must be true or false, got {_tname(v)} {v!r}")
        elif k in ("int", "float"):
            ok = isinstance(v, int) and not isinstance(v, bool)
            ok = ok or (k == "float" and isinstance(v, float))
            if not ok:
                return self.err(pos, f"{path} must be a{'n integer' if k == 'int' else ' number'}"
                                f", got {_tname(v)} {v!r}")
            if (s.lo is not None and v < s.lo) or (s.hi is not None and v > s.hi):
                self.err(pos, f"{path} must be between {s.lo:g} and {s.hi:g}, got {v}")
        elif k == "enum":
            if v not in s.choices:
                hint = difflib.get_close_matches(str(v), s.choices, 1)
                self.err(pos, f"{path} must be one of {', '.join(s.choices)}, got {v!r}"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(v), "mapping" if isinstance(v, dict) else "list" if isinstance(v, list)
        else "null" if v is None else type(v).__name__)


def _key_pos(m: Any, key: Any) -> tuple[int, int] | None:
    try:
        return tuple(m.lc.key(key))  # type: ignore[return-value]
    except (AttributeError, KeyError, TypeError):
        return None


def _val_pos(m: Any, key: Any) -> tuple[int, int] | None:
    try:
        return tuple(m.lc.value(key))  # type: ignore[return-value]
    except (AttributeError, KeyError, TypeError):
        return _key_pos(m, key)


def _item_pos(seq: Any, i: int) -> tuple[int, int] | None:
    try:
        return tuple(seq.lc.item(i))  # type: ignore[return-value]
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def problems(doc: Any, what: str) -> list[str]:
    w = _Walker(what)
    w.check(doc, SCHEMA, "", (0, 0))
    if isinstance(doc, dict) and not w.problems:
        _semantic(doc, w)
    return w.problems


def _semantic(doc: dict, w: _Walker) -> None:
    seen: set[str] = set()
    for i, n in enumerate(doc.get("nodes") or []):
        if n["name"] in seen:
            w.err(_item_pos(doc["nodes"], i), f"node name {n['name']!r} is used twice")
        seen.add(n["name"])
        if "mode" in n and n.get("role", "rhizomorph") != "sclerotium":
            w.err(_key_pos(n, "mode"), f"nodes[{i}].mode only applies to role sclerotium")
    services = doc.get("services") or {}
    names = list(services.get("endomycetes") or {}) + list(services.get("endophytes") or {})
    for dup in {n for n in names if names.count(n) > 1}:
        w.err(None, f"service name {dup!r} is both an endomycete and an endophyte")
    for name, e in (services.get("endomycetes") or {}).items():
        if not e.get("image") and not e.get("manifest"):
            w.err(_key_pos(services["endomycetes"], name),
                  f"endomycete {name!r} needs an image or a manifest")
    for name, e in (services.get("endophytes") or {}).items():
        t = e.get("throttle") or {}
        if t.get("curve") == "custom" and not t.get("points"):
            w.err(_key_pos(e, "throttle"), f"endophyte {name!r}: custom curve needs points")
        for j, p in enumerate(t.get("points") or []):
            if len(p) != 2:
                w.err(_key_pos(t, "points"), f"endophyte {name!r}: throttle point {j} must "
                      "be [load, throttle]")


def parse_state(data: bytes, what: str = "network.yaml") -> d.DesiredState:
    doc = load_yaml(data, what)
    found = problems(doc, what)
    if found:
        raise SchemaError(found)
    return to_state(doc)


def _s(m: dict | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (m or {}).items()}


def to_state(doc: dict) -> d.DesiredState:
    sp, comp = doc.get("spores") or {}, doc.get("components") or {}
    services = doc.get("services") or {}
    nodes = tuple(d.Node(n["name"], n.get("role", "rhizomorph"),
                         n.get("mode", "dedicated") if n.get("role") == "sclerotium" else None,
                         _s(n.get("labels")), tuple(n.get("addresses") or ()),
                         n.get("runtime", "k3s")) for n in doc.get("nodes") or [])
    users = tuple(d.User(u["name"], tuple(u.get("ssh_keys") or ()), bool(u.get("sudo", False)))
                  for u in doc.get("users") or [])
    pr, se, la = sp.get("primary") or {}, sp.get("seed") or {}, sp.get("latent") or {}
    spores = d.Spores(d.PrimarySettings(pr.get("target_sclerotia", 3)),
                      d.SeedSettings(tuple(se.get("locations") or ())),
                      d.LatentSettings(la.get("interval_ms", 200), la.get("fanout", 3)))
    k3s = comp.get("k3s") or {}
    components = d.Components(d.K3sArtifact(**{k: str(v) for k, v in k3s.items()}),
                              comp.get("vm_runtime", True), comp.get("ram_replication", True))
    endos = tuple(d.Endomycete(
        name, e.get("image", ""), e.get("replicas", 1),
        tuple(d.Port(p["port"], p.get("protocol", "tcp"), p.get("target"))
              for p in e.get("ports") or []),
        _s(e.get("env")), e.get("manifest", ""), _s(e.get("labels")))
        for name, e in (services.get("endomycetes") or {}).items())
    phytes = []
    for name, e in (services.get("endophytes") or {}).items():
        t = e.get("throttle") or {}
        phytes.append(d.Endophyte(
            name, e["image"], e.get("cpus", 1), e.get("memory_mb", 512), e.get("backups", 1),
            e.get("replication_interval_ms", 1000),
            d.Throttle(t.get("curve", "linear"), float(t.get("threshold", 0.8)),
                       tuple((float(a), float(b)) for a, b in t.get("points") or []),
                       t.get("emergency_pause", True)),
            _s(e.get("labels"))))
    return d.DesiredState(doc["network"]["name"], nodes, users, spores, components, endos,
                          tuple(phytes), tuple(doc.get("revoked") or ()))


def render_network_yaml(network_name: str) -> bytes:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template("network.yaml.j2").render(network_name=network_name).encode()
