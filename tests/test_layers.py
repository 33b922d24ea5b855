"""The layers, read from the source: every import of every project module, parsed with `ast`
(imports inside functions and under `if TYPE_CHECKING:` count too: an annotation-only
import still ties the importer to the imported module).

Three rules, each failing with the offending import as file:line:
- purity: agent/trust/ and agent/desired/ are pure verdicts and pipelines, so neither they
  nor any project module they reach imports aiohttp, asyncio, socket, subprocess or
  pysyncobj;
- layering: a module imports only its own layer or lower ones (LAYERS, low -> high);
  gossip and raft are siblings that never import each other, and recipes/ never imports
  agent (recipes.params is data shared with agent/desired);
- no import cycle between project modules.

Dynamic imports (importlib.import_module with a computed name) are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("agent", "recipes", "image", "tui", "configs", "build.py")

# What a pure layer must never reach, directly or through project modules.
IMPURE = frozenset({"aiohttp", "asyncio", "socket", "subprocess", "pysyncobj"})
PURE = ("agent.trust", "agent.desired")
# What the daemon must never reach: a node runs its dashboard as a separate process.
NOT_IN_DAEMON = frozenset({"textual", "segno", "rich"})
DAEMON = ("agent.node",)

# Low -> high. A module belongs to the layer with the longest matching prefix; the
# prefixes of a rank named "a|b" are siblings that may not import each other. recipes/
# (pyinfra operations, importing nothing of agent) sits above the shared modules and below
# whatever plans or runs them.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shared", ("agent", "agent.errors", "agent.statefile", "agent.client", "agent.tls",
                "agent.serve", "agent.tuning", "configs", "recipes.params")),
    ("recipes", ("recipes",)),
    ("trust", ("agent.trust",)),
    ("desired", ("agent.desired",)),
    ("gossip|raft", ("agent.gossip", "agent.raft")),
    ("node", ("agent.node",)),
    # views imports nothing of mycelium; below authoring, whose push steps follow a push
    # with its Convergence
    ("views", ("agent.views",)),
    ("authoring", ("agent.authoring",)),
    ("lab", ("agent.lab",)),
    ("tui", ("tui",)),  # below cli: `mycelium tui` starts it
    ("cli", ("agent.cli",)),
    ("image", ("image",)),
    ("build.py", ("build",)),
)
# Packages whose own __init__ only: "agent" must not swallow every agent.* module.
EXACT = frozenset({"agent"})

@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # a project module, or the top-level name of a foreign one
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.target}"


@dataclass(frozen=True)
class Source:
    path: str  # as shown in messages, relative to the repository
    text: str


def project_sources(root: Path = ROOT) -> dict[str, Source]:
    """Module name -> source, for every module of the scanned packages and build.py."""
    out: dict[str, Source] = {}
    for top in SCANNED:
        files = [root / top] if top.endswith(".py") else sorted((root / top).rglob("*.py"))
        for f in files:
            rel = f.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = Source(str(rel), f.read_text())
    return out


def _resolve(name: str, modules: Iterable[str]) -> str:
    """The longest project module `name` lies in, else the foreign top-level name."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return parts[0]


def imports_of(module: str, src: Source, modules: Mapping[str, Source]) -> list[Import]:
    """Every import statement in `src`, wherever it sits, resolved to modules."""
    is_pkg = src.path.endswith("__init__.py")
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(ast.parse(src.text, src.path)):
        where = f"{src.path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [Import(module, _resolve(a.name, modules), where) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(module, sub if sub in modules else _resolve(base, modules),
                                  where))
    return [i for i in out if i.target != module]


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, layer prefix) of a project module, or None when no layer claims it."""
    best: tuple[int, str] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p in EXACT else module == p or module.startswith(p + ".")
            if hit and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    return best


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def purity_problems(graph: Mapping[str, list[Import]], pure: tuple[str, ...] = PURE,
                    impure: frozenset[str] = IMPURE, what: str = "pure") -> list[str]:
    """An impure import reached from a pure module, with the chain of imports leading there
    (importing a module runs its parent packages' __init__ too, so those are followed)."""
    out = []
    for start in sorted(m for m in graph if any(_in(m, p) for p in pure)):
        chain: dict[str, list[Import]] = {start: []}
        todo = [start]
        while todo:
            m = todo.pop(0)
            for imp in graph.get(m, []):
                if imp.target in impure:
                    path = " -> ".join(str(i) for i in chain[m] + [imp])
                    out.append(f"{start} is {what} but reaches {imp.target}: {path}")
                    continue
                for nxt in [imp.target] + _parents(imp.target):
                    if nxt in graph and nxt not in chain:
                        chain[nxt] = chain[m] + [imp]
                        todo.append(nxt)
    return out


def layering_problems(graph: Mapping[str, list[Import]]) -> list[str]:
    out = []
    for m in sorted(graph):
        mine = layer_of(m)
        if mine is None:
            out.append(f"{m} is in no layer: add it to LAYERS in tests/test_layers.py")
            continue
        for imp in graph[m]:
            if imp.target not in graph:
                continue
            if _in(m, "recipes") and _in(imp.target, "agent"):
                out.append(f"{imp}: recipes/ must not import agent")
                continue
            theirs = layer_of(imp.target)
            if theirs is None:
                continue  # reported once, for the module itself
            if theirs[0] > mine[0]:
                out.append(f"{imp}: layer {mine[1]} imports the higher layer {theirs[1]}")
            elif theirs[0] == mine[0] and theirs[1] != mine[1] and "|" in LAYERS[mine[0]][0]:
                out.append(f"{imp}: siblings {mine[1]} and {theirs[1]} never import each other")
    return out


def cycle_problems(graph: Mapping[str, list[Import]]) -> list[str]:
    """One message per strongly connected set of modules, naming one cycle's imports."""
    edges = {m: [i for i in imps if i.target in graph]
             for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the project is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for imp in edges[v]:
            w = imp.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [f"import cycle among {', '.join(scc)}: " + " -> ".join(
        str(i) for i in _one_cycle(scc, edges)) for scc in sorted(sccs)]


def _one_cycle(scc: list[str], edges: Mapping[str, list[Import]]) -> list[Import]:
    """The imports of a shortest cycle through the first module of `scc`."""
    start, members = scc[0], set(scc)
    came: dict[str, list[Import]] = {start: []}
    todo = [start]
    while todo:
        m = todo.pop(0)
        for imp in edges[m]:
            if imp.target == start:
                return came[m] + [imp]
            if imp.target in members and imp.target not in came:
                came[imp.target] = came[m] + [imp]
                todo.append(imp.target)
    return []


def problems(sources: Mapping[str, Source]) -> list[str]:
    graph = {m: imports_of(m, s, sources) for m, s in sources.items()}
    return (purity_problems(graph) + layering_problems(graph) + cycle_problems(graph)
            + purity_problems(graph, DAEMON, NOT_IN_DAEMON, "the daemon"))


def _synthetic(**modules: str) -> dict[str, Source]:
    out = {}
    for name, text in modules.items():
        name = name.replace("__", ".")
        out[name] = Source(name.replace(".", "/") + ".py", text)
    return out


def test_project_imports_follow_the_layers():
    found = problems(project_sources())
    assert not found, "\n".join(found)


def test_checker_catches_impurity_upward_imports_and_cycles():
    found = problems(_synthetic(
        agent__errors="",
        agent__trust__verdict="from agent.trust import helper\n",
        agent__trust__helper="import json\n\ndef f():\n    import asyncio\n",
        agent__desired__plan="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from agent.node.daemon import Agent\n",
        agent__node__daemon="from agent.errors import x\nfrom agent.node import show\n",
        agent__node__show="from textual.app import App\n",
        agent__gossip__swim="import agent.raft.store\n",
        agent__raft__store="",
        recipes__run="from agent.errors import x\n",
        image__a="from image import b\n",
        image__b="from . import a\n",
    ))
    text = "\n".join(found)
    assert ("agent.trust.verdict is pure but reaches asyncio: agent/trust/verdict.py:1: "
            "agent.trust.verdict imports agent.trust.helper -> agent/trust/helper.py:4: "
            "agent.trust.helper imports asyncio") in text
    assert ("agent/desired/plan.py:3: agent.desired.plan imports agent.node.daemon: "
            "layer agent.desired imports the higher layer agent.node") in text
    assert "agent/gossip/swim.py:1: agent.gossip.swim imports agent.raft.store: siblings" in text
    assert "recipes/run.py:1: recipes.run imports agent.errors: recipes/ must not import" in text
    assert ("import cycle among image.a, image.b: image/a.py:1: image.a imports image.b -> "
            "image/b.py:1: image.b imports image.a") in text
    assert ("agent.node.daemon is the daemon but reaches textual: agent/node/daemon.py:2: "
            "agent.node.daemon imports agent.node.show -> agent/node/show.py:1: "
            "agent.node.show imports textual") in text
    assert len(found) == 8, text  # the trust helper and agent.node.show also count
    assert cycle_problems({m: imports_of(m, s, {}) for m, s in _synthetic(x="").items()}) == []
