"""Data-driven cases for every recipe operation and fact (tests/recipe_cases/)."""

from __future__ import annotations

import pytest

from support.recipe_harness import cases, load, run_fact, run_op

OPS = cases("operations")
FACTS = cases("facts")


@pytest.mark.parametrize(("op", "path"), OPS, ids=[f"{o}/{p.stem}" for o, p in OPS])
def test_operation_case(op, path):
    case = load(path)
    if "exception" in case:
        with pytest.raises(Exception, match=case["exception"]):
            run_op(op, case)
        return
    commands, noops = run_op(op, case)
    assert commands == [c.replace("{here}", case["_here"]) for c in case["commands"]]
    if "noop" in case:
        assert any(case["noop"] in n for n in noops), noops


@pytest.mark.parametrize(("fact", "path"), FACTS, ids=[f"{f}/{p.stem}" for f, p in FACTS])
def test_fact_case(fact, path):
    case = load(path)
    command, value = run_fact(fact, case)
    assert command == case["command"]
    assert value == case["fact"]


def test_every_operation_and_fact_has_cases():
    import inspect

    from pyinfra.api import FactBase

    import recipes.artifact
    import recipes.facts
    import recipes.podman
    import recipes.units
    import recipes.venv

    have_ops = {o for o, _ in OPS}
    have_facts = {f for f, _ in FACTS}
    for mod in (recipes.artifact, recipes.podman, recipes.units, recipes.venv, recipes.facts):
        short = mod.__name__.split(".")[-1]
        for name, obj in vars(mod).items():
            if getattr(obj, "_inner", None) and obj.__module__ == mod.__name__:
                assert f"{short}.{name}" in have_ops, f"no case for operation {short}.{name}"
            if (inspect.isclass(obj) and issubclass(obj, FactBase) and obj is not FactBase
                    and obj.__module__ == mod.__name__):
                assert f"{short}.{name}" in have_facts, f"no case for fact {short}.{name}"


def test_unreachable_target_is_one_clear_error():
    from recipes.run import run

    report = run("@chroot/nonexistent-rootfs", [], dry_run=True)
    assert not report.ok and "cannot connect to @chroot/nonexistent-rootfs" in report.error
