"""network.yaml schema v1: validation with line and column, then typed DesiredState.

The spec is data (SCHEMA below); one walker checks a round-trip-loaded document against
it and collects EVERY problem as "FILE:LINE:COL: message", with did-you-mean hints for
unknown keys. Only a document with no problems is turned into agent/desired/model.py classes.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent.desired import model as d
from agent.desired.manifests import manifest_warnings
from agent.errors import SchemaError
from agent.trust.encoding import load_yaml
from recipes.names import DNS_LABEL_RULE, POSIX_USER_RULE, is_label, is_user
from recipes.params import User

# How many nodes, users, endomycetes and endophytes (each) a document may list. Every node
# parses, places and plans the whole state, and gossip carries it: a few hundred is the
# design's scale, so this is headroom, not a target. Parsing time is bounded by the YAML
# size cap (agent/trust/encoding.py), the node does it off its event loop.
MAX_ENTRIES = 1000


@dataclass(frozen=True)
class S:
    """One value's rule: kind is str|label|user|int|float|bool|enum|map|list|obj|strmap.

    label is a DNS-1123 label and user a POSIX user name (recipes/names.py): names that
    become paths, hostnames and Kubernetes names. An optional obj, map or list left empty
    (`nodes:` with nothing under it) is the same as leaving it out.
    """

    kind: str
    required: bool = False
    fields: dict[str, S] = field(default_factory=dict)  # obj
    item: S | None = None  # list items / map values
    key: S | None = None  # map keys
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    most: int | None = None  # list/map: at most this many entries


def obj(required: bool = False, **fields: S) -> S:
    return S("obj", required, fields)


NAME = S("str", True)
LABEL = S("label", True)
LABELS = S("strmap")
PORT = obj(port=S("int", True, lo=1, hi=65535), protocol=S("enum", choices=("tcp", "udp")),
           target=S("int", lo=1, hi=65535))
SCHEMA = obj(
    schema=S("int", True, lo=1, hi=1),
    network=obj(True, name=NAME),
    nodes=S("list", most=MAX_ENTRIES, item=obj(
        name=LABEL, role=S("enum", choices=("sclerotium", "rhizomorph", "hypha")),
        mode=S("enum", choices=("dedicated", "dynamic")), labels=LABELS,
        addresses=S("list", item=S("str")), runtime=S("enum", choices=("k3s", "podman")),
        memory_mb=S("int", lo=16, hi=1 << 24))),
    users=S("list", most=MAX_ENTRIES, item=obj(
        name=S("user", True), ssh_keys=S("list", item=S("str")), sudo=S("bool"))),
    spores=obj(
        primary=obj(target_sclerotia=S("int", lo=1, hi=9)),
        seed=obj(locations=S("list", item=S("str"))),
        latent=obj(interval_ms=S("int", lo=20, hi=60000), fanout=S("int", lo=1, hi=16))),
    components=obj(
        k3s=obj(binary=S("str"), binary_sha256=S("str"), images=S("str"),
                images_sha256=S("str")),
        vm_runtime=S("bool"), ram_replication=S("bool")),
    services=obj(
        endomycetes=S("map", key=LABEL, most=MAX_ENTRIES, item=obj(
            image=S("str"), replicas=S("int", lo=0, hi=1000), ports=S("list", item=PORT),
            env=S("strmap"), manifest=S("str"), labels=LABELS)),
        endophytes=S("map", key=LABEL, most=MAX_ENTRIES, item=obj(
            image=S("str"), image_sha256=S("str"), kernel=S("str"), initrd=S("str"),
            cmdline=S("str"), ports=S("list", item=PORT), cpus=S("int", lo=1, hi=256),
            memory_mb=S("int", lo=16, hi=1 << 20), backups=S("int", lo=0, hi=8),
            replication_interval_ms=S("int", lo=10, hi=3_600_000),
            throttle=obj(curve=S("enum", choices=("linear", "exponential", "custom")),
                         threshold=S("float", lo=0, hi=1),
                         points=S("list", item=S("list", item=S("float"))),
                         emergency_pause=S("bool")),
            labels=LABELS))),
    revoked=S("list", item=S("str")),
    # the agent release every node runs (agent/trust/release.py); see _release
    release=obj(version=S("str", True), sha256=S("str", True), url=S("str")),
    # how a new release reaches the nodes (agent/desired/rollout.py)
    rollout=obj(waves=S("list", item=S("wave"), most=10),
                healthy_seconds=S("int", lo=0, hi=86400),
                wave_deadline_seconds=S("int", lo=10, hi=7 * 86400),
                auto_rollback=S("bool")),
)


class _Walker:
    def __init__(self, what: str) -> None:
        self.what = what
        self.problems: list[str] = []

    def err(self, pos: tuple[int, int] | None, msg: str) -> None:
        where = f"{self.what}:{pos[0] + 1}:{pos[1] + 1}" if pos else self.what
        self.problems.append(f"{where}: {msg}")

    def check(self, v: Any, s: S, path: str, pos: tuple[int, int] | None,
              item: bool = False) -> None:
        k = s.kind
        subject = path or "the document"
        if v is None and not path:
            return self.err(pos, "the document is empty; it needs at least `schema: 1` and "
                            "`network: {name: NAME}`")
        if v is None and not s.required and not item and k in ("obj", "map", "strmap", "list"):
            v = [] if k == "list" else {}  # `key:` with nothing under it: left empty
        if s.most is not None and isinstance(v, list | dict) and len(v) > s.most:
            return self.err(pos, f"{subject} has {len(v)} entries; at most {s.most} are "
                            "allowed")  # one line, not one per entry
        if k == "obj":
            if not isinstance(v, dict):
                return self.err(pos, f"{subject} must be a mapping"
                                + (f" with keys {', '.join(s.fields)}" if not path else "")
                                + f", got {_got(v)}")
            for key in v:
                if key not in s.fields:
                    hint = difflib.get_close_matches(str(key), s.fields, 1)
                    more = f"; did you mean {hint[0]!r}?" if hint else \
                        f"; expected one of: {', '.join(s.fields)}"
                    self.err(_key_pos(v, key), f"unknown key {shown(key)} "
                             f"{'in ' + path if path else 'at the top level'}{more}")
            for name, sub in s.fields.items():
                if name in v:
                    self.check(v[name], sub, f"{path}.{name}".lstrip("."), _val_pos(v, name))
                elif sub.required:
                    self.err(pos, f"{subject} is missing required key {name!r}")
        elif k in ("map", "strmap"):
            if not isinstance(v, dict):
                return self.err(pos, f"{subject} must be a mapping, got {_got(v)}")
            for key, val in v.items():
                sub = f"{path}.{key}" if isinstance(key, str) else f"{path}[{shown(key)}]"
                if not isinstance(key, str):
                    self.err(_key_pos(v, key), f"{path}: key {shown(key)} must be a name")
                elif s.key is not None:
                    self.check(key, s.key, path, _key_pos(v, key))
                if k == "strmap":
                    if not isinstance(val, str | int | float) or isinstance(val, bool):
                        self.err(_val_pos(v, key), f"{sub} must be a string, got {_got(val)}")
                else:
                    self.check(val, s.item, sub, _val_pos(v, key))
        elif k == "list":
            if not isinstance(v, list):
                return self.err(pos, f"{subject} must be a list, got {_got(v)}")
            for i, x in enumerate(v):
                self.check(x, s.item, f"{path}[{i}]", _item_pos(v, i) or pos, item=True)
        elif k in ("str", "label", "user"):
            if not isinstance(v, str):
                self.err(pos, f"{subject} must be a string, got {_got(v)}")
            elif k == "label" and not is_label(v):
                self.err(pos, f"{subject}: {shown(v)} is not a valid name; use {DNS_LABEL_RULE}")
            elif k == "user" and not is_user(v):
                self.err(pos, f"{subject}: {shown(v)} is not a valid user name; use "
                         f"{POSIX_USER_RULE}")
        elif k == "wave":  # a node count, a percentage or all
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1) and not (
                    isinstance(v, str) and (v == "all" or _percent(v))):
                self.err(pos, f"{subject} must be a node count (1), a percentage (10%) or "
                         f"all, got {_got(v)}")
        elif k == "bool":
            if not isinstance(v, bool):
                self.err(pos, f"{subject} must be true or false, got {_got(v)}")
        elif k in ("int", "float"):
            ok = isinstance(v, int) and not isinstance(v, bool)
            ok = ok or (k == "float" and isinstance(v, float))
            if not ok:
                return self.err(pos, f"{subject} must be a"
                                f"{'n integer' if k == 'int' else ' number'}, got {_got(v)}")
            if (s.lo is not None and v < s.lo) or (s.hi is not None and v > s.hi):
                self.err(pos, f"{subject} must be between {s.lo:g} and {s.hi:g}, got {v}")
        elif k == "enum":
            if not isinstance(v, str) or v not in s.choices:
                hint = difflib.get_close_matches(str(v), s.choices, 1) \
                    if isinstance(v, str) else []
                self.err(pos, f"{subject} must be one of {', '.join(s.choices)}, got {_got(v)}"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _percent(v: str) -> bool:
    try:
        return v.endswith("%") and 0 < float(v[:-1]) <= 100
    except ValueError:
        return False


def shown(v: Any, limit: int = 60) -> str:
    """A value as the user wrote it in YAML (flow style), not as Python holds it."""
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif v is None:
        text = "null"
    elif isinstance(v, str):
        text = repr(str(v))
    elif isinstance(v, int | float):
        text = repr(int(v) if isinstance(v, int) else float(v))
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{shown(a, limit)}: {shown(b, limit)}" for a, b in v.items()) \
            + "}"
    elif isinstance(v, list | tuple):
        text = "[" + ", ".join(shown(x, limit) for x in v) + "]"
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(v: Any) -> str:
    """'integer 5', 'list [1, 2]', 'null': the kind and the value the user gave."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(v), "mapping" if isinstance(v, dict) else "list" if isinstance(v, list | tuple)
        else "null" if v is None else "number" if isinstance(v, float)
        else "integer" if isinstance(v, int) else "string" if isinstance(v, str)
        else type(v).__name__)
    return "null" if v is None else f"{kind} {shown(v)}"


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
    for dup in sorted(n for n, k in Counter(names).items() if k > 1):
        w.err(_key_pos(services["endophytes"], dup),
              f"service name {dup!r} is both an endomycete and an endophyte")
    _port_clashes(services, w)
    _release(doc.get("release"), w)
    _memory_fits(doc, services, w)
    for name, e in (services.get("endomycetes") or {}).items():
        if not (e or {}).get("image") and not (e or {}).get("manifest"):
            w.err(_key_pos(services["endomycetes"], name),
                  f"endomycete {name!r} needs an image or a manifest")
    for name, e in (services.get("endophytes") or {}).items():
        _endophyte_boot(name, e, services["endophytes"], w)
        t = e.get("throttle") or {}
        if t.get("curve") == "custom" and not t.get("points"):
            w.err(_key_pos(e, "throttle"), f"endophyte {name!r}: custom curve needs points")
        for j, p in enumerate(t.get("points") or []):
            if len(p) != 2:
                w.err(_key_pos(t, "points"), f"endophyte {name!r}: throttle point {j} must "
                      "be [load, throttle]")


def _is_sha256(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())


def _endophyte_boot(name: str, e: dict, parent: dict, w: _Walker) -> None:
    """A VM boots from a disk image or a kernel (then initrd and cmdline go with it); an
    image fetched from a URL is checked against its SHA-256, so one is required."""
    image, kernel = e.get("image", ""), e.get("kernel", "")
    if not image and not kernel:
        w.err(_key_pos(parent, name), f"endophyte {name!r} needs an image (disk) or a kernel "
              "(direct boot)")
    sha = e.get("image_sha256", "")
    if sha and not _is_sha256(sha):
        w.err(_val_pos(e, "image_sha256"), f"endophyte {name!r}: image_sha256 must be 64 hex "
              f"digits, got {shown(sha)}")
    if sha and not image:
        w.err(_key_pos(e, "image_sha256"), f"endophyte {name!r}: image_sha256 without an image")
    if image.startswith(("http://", "https://")) and not sha:
        w.err(_val_pos(e, "image"), f"endophyte {name!r}: an image URL needs image_sha256 "
              "(its published SHA-256), so a wrong download never boots")
    for key in ("kernel", "initrd"):
        if e.get(key, "").startswith(("http://", "https://")):
            w.err(_val_pos(e, key), f"endophyte {name!r}: {key} must be a path on the node; "
                  "put a kernel fetched from a URL into a disk image instead")
    for key in ("initrd", "cmdline"):
        if key in e and not kernel:
            w.err(_key_pos(e, key), f"endophyte {name!r}: {key} only applies with a kernel")


def _release(r: dict | None, w: _Walker) -> None:
    """The artifact is named by its SHA-256 (nodes take it from any peer and hash it), and
    a URL, when given, is where a node fetches it if no peer holds it."""
    if not r:
        return
    if not _is_sha256(r["sha256"]) or r["sha256"] != r["sha256"].lower():
        w.err(_val_pos(r, "sha256"), f"release.sha256 must be 64 lower-case hex digits (what "
              f"`mycelium release create` prints), got {shown(r['sha256'])}")
    if not r["version"].strip():
        w.err(_val_pos(r, "version"), "release.version must not be empty")
    url = r.get("url", "")
    if url and not url.startswith(("http://", "https://", "/")):
        w.err(_val_pos(r, "url"), f"release.url must be an http(s) URL or an absolute path, "
              f"got {shown(url)}")


def _port_clashes(services: dict, w: _Walker) -> None:
    """A node port is forwarded to one service: two services declaring it could be placed
    on the same node, so it is refused here (second use named, first use given)."""
    seen: dict[tuple[int, str], str] = {}
    for kind in ("endomycetes", "endophytes"):
        for name, e in (services.get(kind) or {}).items():
            for i, p in enumerate((e or {}).get("ports") or []):
                key = (p["port"], p.get("protocol", "tcp"))
                if key in seen and seen[key] != name:
                    w.err(_item_pos(e["ports"], i), f"services.{kind}.{name}.ports[{i}]: "
                          f"port {key[0]}/{key[1]} is already forwarded to {seen[key]!r}; "
                          "a node forwards a port to one service")
                seen.setdefault(key, name)


def _memory_fits(doc: dict, services: dict, w: _Walker) -> None:
    """When every node that can run a VM says how much memory it has (nodes[].memory_mb),
    a VM asking more than the largest of them could never start anywhere."""
    hosts = [n for n in doc.get("nodes") or [] if n.get("role", "rhizomorph") != "hypha"]
    if not hosts or any("memory_mb" not in n for n in hosts):
        return
    big = max(hosts, key=lambda n: n["memory_mb"])
    for name, e in (services.get("endophytes") or {}).items():
        if e.get("memory_mb", 512) > big["memory_mb"]:
            w.err(_val_pos(e, "memory_mb") or _key_pos(services["endophytes"], name),
                  f"endophyte {name!r}: memory_mb {e.get('memory_mb', 512)} is more than any "
                  f"node has (largest: {big['memory_mb']} on {big['name']})")


def parse_state(data: bytes, what: str = "network.yaml") -> d.DesiredState:
    return parse_checked(data, what)[0]


def parse_checked(data: bytes, what: str = "network.yaml") -> tuple[d.DesiredState, list[str]]:
    """The state and its warnings ("FILE:LINE:COL: warning: ..."): things that are valid
    but will not do what they say (see agent/desired/manifests.py manifest_warnings)."""
    doc = load_yaml(data, what)
    found = problems(doc, what)
    if found:
        raise SchemaError(found)
    state = to_state(doc)
    return state, _warnings(doc, state, what)


def _warnings(doc: dict, state: d.DesiredState, what: str) -> list[str]:
    w = _Walker(what)
    endos = (doc.get("services") or {}).get("endomycetes") or {}
    for svc in state.endomycetes:
        podman = [n.name for n in state.nodes if n.runtime == "podman" and n.role != "hypha"
                  and all(n.labels.get(k) == v for k, v in svc.labels.items())]
        pos = _val_pos(endos[svc.name], "manifest") or _key_pos(endos, svc.name)
        for msg in manifest_warnings(svc, podman):
            w.err(pos, f"warning: services.endomycetes.{svc.name}.manifest: {msg}")
    return w.problems


def _s(m: dict | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (m or {}).items()}


def _ports(e: dict) -> tuple[d.Port, ...]:
    return tuple(d.Port(p["port"], p.get("protocol", "tcp"), p.get("target"))
                 for p in e.get("ports") or [])


def to_state(doc: dict) -> d.DesiredState:
    sp, comp = doc.get("spores") or {}, doc.get("components") or {}
    services = doc.get("services") or {}
    nodes = tuple(d.Node(n["name"], n.get("role", "rhizomorph"),
                         n.get("mode", "dedicated") if n.get("role") == "sclerotium" else None,
                         _s(n.get("labels")), tuple(n.get("addresses") or ()),
                         n.get("runtime"), n.get("memory_mb")) for n in doc.get("nodes") or [])
    users = tuple(User(u["name"], tuple(u.get("ssh_keys") or ()), bool(u.get("sudo", False)))
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
        _ports(e),
        _s(e.get("env")), e.get("manifest", ""), _s(e.get("labels")))
        for name, e in ((n, e or {}) for n, e in (services.get("endomycetes") or {}).items()))
    phytes = []
    for name, e in (services.get("endophytes") or {}).items():
        t = e.get("throttle") or {}
        phytes.append(d.Endophyte(
            name, e.get("image", ""), e.get("cpus", 1), e.get("memory_mb", 512),
            e.get("backups", 1),
            e.get("replication_interval_ms", 1000),
            d.Throttle(t.get("curve", "linear"), float(t.get("threshold", 0.8)),
                       tuple((float(a), float(b)) for a, b in t.get("points") or []),
                       t.get("emergency_pause", True)),
            _s(e.get("labels")), e.get("image_sha256", "").lower(), e.get("kernel", ""),
            e.get("initrd", ""), e.get("cmdline", ""),
            _ports(e)))
    ro = doc.get("rollout")
    rollout = d.RolloutPolicy(tuple(str(w) for w in ro.get("waves") or ("1", "50%", "all")),
                              ro.get("healthy_seconds", 30), ro.get("wave_deadline_seconds",
                                                                    600),
                              ro.get("auto_rollback", False)) if ro else None
    rel = doc.get("release")
    release = d.Release(rel["version"], rel["sha256"], rel.get("url", "")) if rel else None
    return d.DesiredState(doc["network"]["name"], nodes, users, spores, components, endos,
                          tuple(phytes), tuple(doc.get("revoked") or ()), release, rollout)
