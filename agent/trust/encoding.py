"""The only place bytes become Python data and back (JSON, canonical JSON, YAML).

Canonical JSON (sorted keys, no spaces, UTF-8) is what signatures cover, so the same
dict always signs to the same bytes. YAML is loaded with YAML 1.2 typing only, after
size and depth caps, and refuses aliases, unknown tags and lists or mappings used as keys
outright. Whatever the input, loading ends in a value or one YamlError line with a
line:col, never a parser traceback (tests/test_yaml_suite.py runs the whole YAML test
suite through it).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    MappingStartEvent,
    NodeEvent,
)
from ruamel.yaml.parser import RoundTripParser
from ruamel.yaml.tokens import CommentToken

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
_CORE_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in
                       ("str", "int", "map", "seq", "bool", "null", "float"))
_STR_TAG = "tag:yaml.org,2002:str"
# What a parser bug on odd input raises; caught so every input ends in one line.
_PARSER_BUGS = (NotImplementedError, TypeError, ValueError, AttributeError, IndexError,
                KeyError, AssertionError)


class _Parser(RoundTripParser):
    """ruamel's round-trip parser, minus one crash on ordinary network.yaml.

    A comment after a key whose value is on the next line, followed by blank lines
    (`name:   # the name` / `    t` / blank lines), makes ruamel move two comments onto
    one token and raise NotImplementedError("overlap in comment"). Both comments are
    joined here instead, so the file loads and a round trip keeps them.
    """

    def move_token_comment(self, token: Any, nt: Any = None, empty: Any = False) -> Any:
        target = self.scanner.peek_token() if nt is None else nt
        mine, theirs = token.comment, getattr(target, "comment", None)
        if mine and theirs:
            for i in (0, 1):
                if isinstance(mine[i], CommentToken) and isinstance(theirs[i], CommentToken):
                    theirs[i] = CommentToken(mine[i].value + theirs[i].value,
                                             mine[i].start_mark, None)
                    mine[i] = None
        return token.move_old_comment(target, empty=empty)


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.Parser = _Parser
    y.version = (1, 2)
    y.allow_duplicate_keys = False
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _where(what: str, mark: Any) -> str:
    return f"{what}:{mark.line + 1}:{mark.column + 1}" if mark is not None else what


def _check_yaml_text(data: bytes, what: str) -> str:
    """Caps that need no parser: size, directives, encoding, flow bracket nesting."""
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
    if _flow_depth(data) > MAX_YAML_DEPTH:
        raise YamlError(f"{what}: nested deeper than {MAX_YAML_DEPTH} levels")
    return text


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _flow_depth(data: bytes) -> int:
    """Upper bound on flow nesting (brackets in strings and comments count too), before
    the parser runs at all; stops counting past the cap. Only the brackets are looped over
    (bytes.translate drops the rest in C), so a file with few brackets costs nothing."""
    depth = deepest = 0
    for b in data.translate(None, _NOT_BRACKETS):
        if b in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_YAML_DEPTH:
                    break
        elif depth:
            depth -= 1
    return deepest


def _check_events(text: str, what: str) -> None:
    """Walk the parser's event stream (it holds no tree) and stop at the first event that
    breaks a rule: nesting deeper than the cap (so `- - - … x` is refused after 33 levels,
    in time linear in the input, before anything is built), a list or mapping used as a
    key, an anchor or alias (so an alias bomb never expands), or a non-core tag."""
    # one entry per open collection: the number of children seen in a mapping, -1 in a list
    open_: list[int] = []
    for event in _yaml().parse(io.StringIO(text)):
        mark = event.start_mark
        if isinstance(event, CollectionEndEvent):
            open_.pop()
            continue
        if not isinstance(event, NodeEvent):
            continue
        if event.anchor is not None or isinstance(event, AliasEvent):
            raise YamlError(f"{_where(what, mark)}: YAML anchors and aliases are not allowed")
        tag = getattr(event, "tag", None)
        tag = getattr(tag, "value", tag)
        if tag is not None and tag not in _CORE_TAGS:
            raise YamlError(f"{_where(what, mark)}: unknown tag {tag!r}")
        is_key = bool(open_) and open_[-1] >= 0 and open_[-1] % 2 == 0
        if open_ and open_[-1] >= 0:
            open_[-1] += 1
        if isinstance(event, CollectionStartEvent):
            if is_key:
                kind = "mapping" if isinstance(event, MappingStartEvent) else "list"
                raise YamlError(f"{_where(what, mark)}: a {kind} used as a key; keys must be "
                                "plain names")
            if len(open_) >= MAX_YAML_DEPTH:
                raise YamlError(f"{_where(what, mark)}: nested deeper than {MAX_YAML_DEPTH} "
                                "levels")
            open_.append(0 if isinstance(event, MappingStartEvent) else -1)


def _untag(node: Any, what: str) -> Any:
    """`!!str x` loads as a TaggedScalar; make it the plain string it means, keys included,
    so nothing downstream (and no message) ever sees a ruamel wrapper."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for key in list(cur):
                value = cur[key]
                if isinstance(value, TaggedScalar) and value.tag.value == _STR_TAG:
                    cur[key] = value = str(value.value)
                if isinstance(key, TaggedScalar) and key.tag.value == _STR_TAG:
                    plain = str(key.value)
                    pos = cur.lc.data.pop(key, None)
                    if plain in cur:
                        where = _where(what, None) if pos is None else \
                            f"{what}:{pos[0] + 1}:{pos[1] + 1}"
                        raise YamlError(f"{where}: duplicate key {plain!r}")
                    cur.insert(list(cur).index(key), plain, value)
                    del cur[key]
                    if pos is not None:
                        cur.lc.data[plain] = pos
                stack.append(value)
        elif isinstance(cur, list):
            for i, item in enumerate(cur):
                if isinstance(item, TaggedScalar) and item.tag.value == _STR_TAG:
                    cur[i] = str(item.value)
                stack.append(cur[i])
    return node


def _loading(what: str, load: Any) -> Any:
    try:
        return load()
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join((e.problem or e.context or "invalid YAML").split())
        raise YamlError(f"{_where(what, mark)}: {problem}") from e
    except YAMLError as e:
        raise YamlError(f"{what}: {' '.join(str(e).split())}") from e
    except RecursionError as e:
        raise YamlError(f"{what}: nested too deeply") from e
    except _PARSER_BUGS as e:  # ruamel failing on odd input: still one line, not a traceback
        raise YamlError(f"{what}: the YAML parser cannot read this "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from e


def load_yaml(data: bytes, what: str = "network.yaml") -> Any:
    """Round-trip load (comments kept) of untrusted-shaped YAML, with every cap applied."""
    text = _check_yaml_text(data, what)
    _loading(what, lambda: _check_events(text, what))
    return _untag(_loading(what, lambda: _yaml().load(text)), what)


def load_yaml_all(data: bytes, what: str) -> list[Any]:
    """Every document of a multi-document stream (a Kubernetes manifest), same caps."""
    text = _check_yaml_text(data, what)
    _loading(what, lambda: _check_events(text, what))
    return [_untag(d, what) for d in _loading(what, lambda: list(_yaml().load_all(text)))]


def dump_yaml(doc: Any) -> bytes:
    buf = io.StringIO()
    y = _yaml()
    y.version = None
    y.dump(doc, buf)
    return buf.getvalue().encode()
