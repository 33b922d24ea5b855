"""Lint as part of the test suite: ruff, and the shape of the test tree itself (helpers
come from tests/support/ or conftest.py, never from another test module; every test name
is unique, so `-k NAME` and a failure report point at one test)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py")
                  if p.name.startswith(("test_", "bench_")) and "support" not in p.parts)


def test_ruff_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_test_modules_import_no_other_test_module():
    bad = []
    for p in _test_modules():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{p.relative_to(ROOT)}:{node.lineno}: imports {n}" for n in names
                    if n.split(".")[0].startswith(("test_", "bench_"))]
    assert not bad, "move shared helpers to tests/support/:\n" + "\n".join(bad)


def test_test_names_are_unique():
    where = defaultdict(list)
    for p in _test_modules():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                    and node.name.startswith("test_"):
                where[node.name].append(f"{p.relative_to(ROOT)}:{node.lineno}")
    dup = {n: w for n, w in where.items() if len(w) > 1}
    assert not dup, "\n".join(f"{n}: {', '.join(w)}" for n, w in sorted(dup.items()))


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists packages by name: a new one left out is missing from the
    node's venv (agent/node/vm was, and every booted agent died on import)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("agent", "recipes", "image", "tui", "configs")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
