"""The only place bytes become Python data and back (JSON, canonical JSON, YAML).

Canonical JSON (sorted keys, no spaces, UTF-8) is what signatures cover, so the same
dict always signs to the same bytes. YAML is loaded with YAML 1.2 typing only, after
size and depth caps, and refuses aliases and unknown tags outright.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agent.errors import DataError, TooLargeError, YamlError

MAX_JSON_BYTES = 1 << 20
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_DEPTH = 32


def canonical(obj: Any) -> bytes:
    """Deterministic encoding signed over: sorted keys, compact, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def load_json(data: bytes, what: str = "document", cap: int = MAX_JSON_BYTES) -> Any:
    if len(data) > cap:
        raise TooLargeError(f"{what} is {len(data)} bytes, over the {cap}-byte cap")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} is not valid JSON: {e}") from e


def load_json_object(data: bytes, what: str = "document", cap: int = MAX_JSON_BYTES) -> dict:
    obj = load_json(data, what, cap)
    if not isinstance(obj, dict):
        raise DataError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


_DIRECTIVE = re.compile(rb"^%", re.MULTILINE)
_ALIAS = re.compile(rb"(^|[\s\[\{,:-])[&*][^\s\]\},]+")


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.version = (1, 2)
    y.allow_duplicate_keys = False
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _check_yaml_text(data: bytes, what: str) -> str:
    if len(data) > MAX_YAML_BYTES:
        raise TooLargeError(f"{what} is {len(data)} bytes, over the {MAX_YAML_BYTES}-byte cap")
    m = _DIRECTIVE.search(data)
    if m:
        line = data.count(b"\n", 0, m.start()) + 1
        raise YamlError(f"{what}:{line}:1: YAML directives (%YAML, %TAG) are not allowed; "
                        "remove the line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{what}: not UTF-8 text ({e})") from e
    depth = 0
    for ch in text:  # cheap upper bound on flow nesting before the parser recurses
        if ch in "[{":
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise YamlError(f"{what}: nested deeper than {MAX_YAML_DEPTH} levels")
        elif ch in "]}":
            depth = max(0, depth - 1)
    return text


def _walk_depth(node: Any, what: str) -> None:
    """Refuse block nesting deeper than the cap, and any alias (shared node)."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(node, 0)]
    while stack:
        cur, d = stack.pop()
        if d > MAX_YAML_DEPTH:
            raise YamlError(f"{what}: nested deeper than {MAX_YAML_DEPTH} levels")
        if isinstance(cur, dict | list):
            if id(cur) in seen:
                raise YamlError(f"{what}: YAML anchors and aliases are not allowed")
            seen.add(id(cur))
            children = cur.values() if isinstance(cur, dict) else cur
            stack.extend((c, d + 1) for c in children)


def load_yaml(data: bytes, what: str = "network.yaml") -> Any:
    """Round-trip load (comments kept) of untrusted-shaped YAML, with every cap applied."""
    text = _check_yaml_text(data, what)
    y = _yaml()
    try:
        # Anchors are refused from the event stream, so an alias bomb never expands.
        for event in y.parse(io.StringIO(text)):
            anchor = getattr(event, "anchor", None)
            if anchor is not None or type(event).__name__ == "AliasEvent":
                mark = event.start_mark
                raise YamlError(f"{what}:{mark.line + 1}:{mark.column + 1}: YAML anchors and "
                                "aliases are not allowed")
            tag = getattr(event, "tag", None)
            if tag is not None and not _plain_tag(tag, event):
                mark = event.start_mark
                raise YamlError(f"{what}:{mark.line + 1}:{mark.column + 1}: unknown tag {tag!r}")
        doc = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{what}:{mark.line + 1}:{mark.column + 1}" if mark else what
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise YamlError(f"{where}: {problem}") from e
    except YAMLError as e:
        raise YamlError(f"{what}: {e}") from e
    except RecursionError as e:
        raise YamlError(f"{what}: nested too deeply") from e
    _walk_depth(doc, what)
    return doc


def _plain_tag(tag: str, event: Any) -> bool:
    # The parser reports implicit tags as None; any explicit tag (!!python/..., !foo) is
    # refused except the standard core-schema ones.
    return tag in {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:map",
                   "tag:yaml.org,2002:seq", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
                   "tag:yaml.org,2002:float"}


def dump_yaml(doc: Any) -> bytes:
    buf = io.StringIO()
    y = _yaml()
    y.version = None
    y.dump(doc, buf)
    return buf.getvalue().encode()
