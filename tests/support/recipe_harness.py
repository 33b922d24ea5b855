"""Run a recipe operation or fact against facts given as data, like pyinfra's own tests.

An operation case is a JSON file: {"args": {...}, "facts": {"Module.Fact": value or
{"key=value": value}}, "commands": [...], "noop": "substring" (optional),
"exception": "substring" (optional)}. A fact case: {"args": {...}, "command": "...",
"output": [...], "fact": ...}.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyinfra.api.command import FileUploadCommand
from pyinfra.context import ctx_host, ctx_state

CASES = Path(__file__).resolve().parent.parent / "recipe_cases"


class FakeHost:
    """Answers get_fact from the case's facts and records noop messages."""

    current_op_global_arguments = None
    in_op = False

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.noops: list[str] = []

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        name = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
        if name not in self.facts:
            raise KeyError(f"case gives no fact {name} (asked with {kwargs})")
        value = self.facts[name]
        if kwargs:
            key = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"case gives no fact {name} for {key}")
            value = value[key]
        return value

    def noop(self, message: str) -> None:
        self.noops.append(message)

    def get_temp_filename(self, *args: Any, **kwargs: Any) -> str:
        return "_tempfile_"


def command_text(cmd: Any) -> str:
    if isinstance(cmd, FileUploadCommand):
        src = cmd.src.getvalue() if hasattr(cmd.src, "getvalue") else str(cmd.src)
        return f"upload {cmd.dest} <- {src}"
    if hasattr(cmd, "get_raw_value"):
        return str(cmd.get_raw_value())
    return str(cmd)


def run_op(op_path: str, case: dict[str, Any]) -> tuple[list[str], list[str]]:
    """op_path like 'units.service' (module under recipes/). Returns (commands, noops)."""
    module, name = op_path.rsplit(".", 1)
    op = getattr(importlib.import_module(f"recipes.{module}"), name)
    host = FakeHost(case.get("facts", {}))
    state = SimpleNamespace(cwd=None, config=SimpleNamespace(DIFF=False))
    args = {k: v.replace("{here}", case["_here"]) if isinstance(v, str) else v
            for k, v in case.get("args", {}).items()}
    with ctx_state.use(state), ctx_host.use(host):
        cmds = [command_text(c) for c in op._inner(**args)]
    return cmds, host.noops


def run_fact(fact_path: str, case: dict[str, Any]) -> tuple[str, Any]:
    module, name = fact_path.rsplit(".", 1)
    fact = getattr(importlib.import_module(f"recipes.{module}"), name)()
    return fact.command(**case.get("args", {})), fact.process(case["output"])


def cases(kind: str) -> list[tuple[str, Path]]:
    found = []
    for folder in sorted((CASES / kind).iterdir()):
        for f in sorted(folder.glob("*.json")):
            found.append((folder.name, f))
    return found


def load(path: Path) -> dict[str, Any]:
    """A case, with `{here}` in string arguments meaning the case's folder."""
    return {**json.loads(path.read_text()), "_here": str(path.parent)}
