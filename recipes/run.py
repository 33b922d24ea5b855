"""Run deploys through pyinfra's Python API and report what each operation did.

One entry point for both users of the recipes: the agent (target `@local`) and the image
builder (target `@chroot/DIR`). `dry_run` plans only: facts are read, nothing changes, and
the report lists the operations that would change with their commands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state

Step = tuple[Callable[..., None], tuple[Any, ...]]  # a deploy function and its arguments


@dataclass
class OpResult:
    name: str
    changed: bool  # would change (dry run) / did change (apply)
    success: bool | None  # None: not run (dry run, or skipped after a failure)
    commands: list[str] = field(default_factory=list)
    output: str = ""  # stdout+stderr of a failed operation


@dataclass
class Report:
    target: str
    dry_run: bool
    ops: list[OpResult]
    duration_s: float
    error: str = ""

    @property
    def changed(self) -> list[OpResult]:
        return [o for o in self.ops if o.changed]

    @property
    def failed(self) -> list[OpResult]:
        return [o for o in self.ops if o.success is False]

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        head = (f"{len(self.ops)} operations, {len(self.changed)} {verb}, "
                f"{len(self.failed)} failed, {self.duration_s:.1f} s")
        return head if self.ok else f"{head}: {self.error or self.failed[0].name}"


def _command_text(cmd: Any) -> str:
    if isinstance(cmd, FileUploadCommand):
        return f"upload {cmd.dest}"
    if hasattr(cmd, "get_raw_value"):
        return str(cmd.get_raw_value())
    return str(cmd)


def run(target: str, steps: Sequence[Step], *, dry_run: bool = False) -> Report:
    """Plan `steps` against `target` and, unless dry_run, apply them."""
    start = time.monotonic()
    logging.getLogger("pyinfra").setLevel(logging.ERROR)  # not its CLI banners
    inventory = Inventory(([target], {}))
    state = State(inventory, Config())
    error = ""
    try:
        try:
            with ctx_state.use(state):
                connect_all(state)
        except PyinfraError:
            pass
        if not state.active_hosts:
            raise PyinfraError(f"cannot connect to {target}: use @local, @chroot/ABS/DIR "
                               "(an existing root filesystem) or an SSH host")
        for func, args in steps:
            add_deploy(state, func, *args)
        if not dry_run:
            run_ops(state)
    except PyinfraError as e:
        error = str(e)
    try:
        host = inventory.get_host(target)
        with ctx_state.use(state), ctx_host.use(host):
            ops = _results(state, host, dry_run)
    finally:
        disconnect_all(state)
    failed = [o.name for o in ops if o.success is False]
    if failed:  # name it, rather than pyinfra's "No hosts remaining!"
        error = f"{failed[0]} failed"
    return Report(target, dry_run, ops, time.monotonic() - start, error)


def _results(state: State, host: Any, dry_run: bool) -> list[OpResult]:
    ops: list[OpResult] = []
    for op_hash in state.get_op_order():
        data = state.ops[host].get(op_hash)
        if data is None:
            continue
        meta = data.operation_meta
        name = ", ".join(sorted(state.get_op_meta(op_hash).names))
        if dry_run:
            cmds = [_command_text(c) for c in data.command_generator()]
            ops.append(OpResult(name, bool(cmds), None, cmds))
        elif meta._success is None:
            ops.append(OpResult(name, False, None))  # skipped after an earlier failure
        else:
            out = ""
            if meta._success is False and meta._combined_output is not None:
                out = "\n".join(meta.stdout_lines + meta.stderr_lines)[-4000:]
            ops.append(OpResult(name, meta.did_change(), bool(meta._success),
                                [_command_text(c) for c in meta._commands or []], out))
    return ops
