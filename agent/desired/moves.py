"""Planned VM moves (`mycelium vm migrate`): a committed placement changed by hand, as a
pure function of the placement and the live members.

Two moves, each refused with one line that says what to do:
- `backup`: node `to` becomes a backup of the VM in place of its last backup (or beside
  the ones placed, when fewer than asked are), so it starts receiving checkpoints;
- `primary`: node `to`, a backup of the VM, becomes its primary and the primary becomes
  a backup in its place (the swap of a planned migration).
The placement then keeps the move: `place` keeps every assignment that is still valid.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from agent.desired.model import DesiredState, NodeShare

Placement = dict[str, NodeShare]
Role = Literal["primary", "backup"]


class MoveError(ValueError):
    """A move that cannot be made; the message says why and what to do."""


def vm_hosts(placement: Placement, vm: str) -> tuple[str | None, list[str]]:
    """(primary, backups) of `vm` in `placement`."""
    primary = next((n for n, s in sorted(placement.items())
                    if vm in s.endophytes_primary), None)
    return primary, sorted(n for n, s in placement.items() if vm in s.endophytes_backup)


def check_move(state: DesiredState, placement: Placement, live: set[str], vm: str,
               to: str, role: Role, replicated: frozenset[str]) -> None:
    """MoveError unless moving `vm` to `to` as `role` makes sense now. `replicated`: the
    VMs whose memory is replicated (agent/node/vm/replicator.py decides which)."""
    if not any(e.name == vm for e in state.endophytes):
        raise MoveError(f"no VM {vm} in the state; see `mycelium vm list`")
    if vm not in replicated:
        raise MoveError(f"VM {vm} is not replicated (it needs backups: 1 or more, and "
                        "components.ram_replication on); a planned move keeps memory only "
                        "for replicated VMs")
    if to not in live:
        raise MoveError(f"node {to} is not a live member; see `mycelium status`")
    primary, backups = vm_hosts(placement, vm)
    if primary is None:
        raise MoveError(f"VM {vm} is not placed on any node; see `mycelium status --shares`")
    if to == primary:
        raise MoveError(f"VM {vm} already runs on {to}")
    if role == "primary" and to not in backups:
        raise MoveError(f"node {to} is not a backup of VM {vm}: make it one first "
                        f"(`mycelium vm migrate {vm} --to {to}` does)")
    if role == "backup" and to in backups:
        raise MoveError(f"node {to} is already a backup of VM {vm}")


def move(state: DesiredState, placement: Placement, live: set[str], vm: str, to: str,
         role: Role, version: int, replicated: frozenset[str]) -> Placement:
    """`placement` with the move made, stamped `version` (MoveError when refused)."""
    check_move(state, placement, live, vm, to, role, replicated)
    primary, backups = vm_hosts(placement, vm)
    out = {n: replace(s, placement_version=version) for n, s in placement.items()}
    if to not in out:
        out[to] = NodeShare(to, placement_version=version)

    def edit(node: str, prim: tuple[str, ...], back: tuple[str, ...]) -> None:
        out[node] = replace(out[node], endophytes_primary=prim, endophytes_backup=back)

    t = out[to]
    if role == "primary":
        assert primary is not None
        p = out[primary]
        edit(primary, tuple(v for v in p.endophytes_primary if v != vm),
             (*p.endophytes_backup, vm))
        edit(to, (*t.endophytes_primary, vm),
             tuple(v for v in t.endophytes_backup if v != vm))
        return out
    spec = next(e for e in state.endophytes if e.name == vm)
    if len(backups) >= spec.backups:  # the last backup gives its seat up
        old = out[backups[-1]]
        edit(old.node, old.endophytes_primary,
             tuple(v for v in old.endophytes_backup if v != vm))
    edit(to, t.endophytes_primary, (*t.endophytes_backup, vm))
    return out
