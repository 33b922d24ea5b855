"""`mycelium vm migrate NAME --to NODE`: a planned move of a replicated VM that reuses its
replicated memory, so the guest is paused only for the last checkpoint and the resume.

Steps, each over the node API with the operator's certificate:
1. find the VM's primary and backups (`/api/v1/vms` of every live node); refuse in one
   line what cannot be done (`plan_move`);
2. a target that is not a backup yet is made one (`POST /api/v1/primary/move` as backup,
   on the Raft leader); before anything pauses the target must have taken a checkpoint
   from this primary (it is in the primary's `acked`), so the final frame is a small
   incremental one and continues the chain the target holds;
3. the primary takes the final checkpoint (`POST /api/v1/vms/NAME/handoff`): a plain
   `migrate`, after which QEMU leaves the guest paused, shipped to the target as the next
   frame; it answers once the target took it;
4. the leader commits the swap (`POST /api/v1/primary/move` as primary); if it refuses,
   the primary's guest runs on (`/thaw`): nothing was lost;
5. the target resumes the VM from that checkpoint (`-incoming`); the old primary quits
   its paused QEMU once gossip shows the target running it.
The pause printed is from the guest stopping for the final checkpoint (QEMU runs it
during the precopy passes and stops it for the last) to the target running it (the
primary's and the target's wall clocks: on two machines it includes their skew).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.authoring.netdir import NetworkDir
from agent.authoring.reach import fetch_vms, operator_hypha
from agent.client import Hypha
from agent.errors import ConfigError, MyceliumError

POLL_S = 0.1
BACKUP_WAIT_S = 180.0  # for a new backup to hold a full checkpoint
RUN_WAIT_S = 120.0  # for the target to run the VM after the commit


@dataclass(frozen=True)
class Plan:
    """Who is who in a move, read from the nodes' /api/v1/vms replies."""

    primary: str
    primary_addr: str
    target_addr: str
    target_placed: bool  # the target is placed as the VM's backup (it may hold nothing yet)
    target_holds: bool  # the target took a checkpoint from this primary


@dataclass(frozen=True)
class Result:
    seq: int  # the final checkpoint
    pause_s: float  # the guest stopped for the final checkpoint -> the target runs it
    total_s: float  # the command, from its first request
    boot: str  # how the target started it ("resumed from checkpoint N")
    migrate_s: float  # the final `migrate` itself
    launch_s: float | None = None  # of the pause: until the target launched QEMU


def plan_move(replies: list[Mapping[str, Any]], vm: str, to: str) -> Plan:
    """The move of `vm` to node `to`, or ConfigError saying why not and what to do."""
    live = {str(r.get("node")): str(r.get("addr")) for r in replies if "error" not in r}
    running = [(str(r["node"]), str(r["addr"]), v) for r in replies if "error" not in r
               for v in r.get("vms") or [] if isinstance(v, dict) and v.get("name") == vm]
    if not running:
        raise ConfigError(f"no live node runs VM {vm}; see `mycelium vm list`")
    # an old primary may still be stopping it: the one running it is the primary
    node, addr, v = min(running, key=lambda r: r[2].get("state") != "running")
    if to not in live:
        down = next((r for r in replies if r.get("node") == to), None)
        why = f"cannot be asked ({down['error']})" if down else "is not a live member"
        raise ConfigError(f"node {to} {why}; see `mycelium status`")
    if to == node:
        raise ConfigError(f"VM {vm} already runs on {to}")
    if not isinstance(v.get("replication"), dict):
        raise ConfigError(f"VM {vm} is not replicated (it needs `backups:` and no disk "
                          "image): its memory cannot move; a placement change boots it cold")
    if v.get("state") != "running":
        raise ConfigError(f"VM {vm} is {v.get('state')} on {node}, not running; wait for "
                          "it (`mycelium vm status`)")
    placed = any(isinstance(b, dict) and b.get("vm") == vm
                 for r in replies if r.get("node") == to for b in r.get("backups") or [])
    return Plan(node, addr, live[to], placed, took_from(v, live[to]))


def took_from(v: Mapping[str, Any], addr: str) -> bool:
    """The primary's record `v` of the VM says backup `addr` took one of its checkpoints."""
    rep = v.get("replication")
    acked = rep.get("acked") if isinstance(rep, dict) else None
    return isinstance(acked, dict) and addr in acked


def leaders_first(members: list[Mapping[str, Any]]) -> list[str]:
    """Addresses of the live sclerotia, the Raft leader first (who commits a move)."""
    rafts = [m for m in members if m.get("state") == "alive"
             and isinstance(m.get("raft"), dict) and m["raft"].get("addr")]
    return [str(m["addr"]) for m in sorted(rafts, key=lambda m: not m["raft"].get("leader"))]


def pause_of(handoff: Mapping[str, Any], running: Mapping[str, Any]) -> float:
    """The guest stopped for the final checkpoint (primary's clock: the migration's start
    plus its time less QEMU's downtime) -> it runs on the target (the target's clock)."""
    return float(running["running_at"]) - float(handoff.get("stopped") or handoff["started"])


async def _wait(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await probe()
        except MyceliumError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise MyceliumError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)


class Uncommitted(MyceliumError):
    """No leader said whether it committed the move (a request failed on the way)."""


async def _commit(h: Hypha, leaders: list[str], vm: str, to: str, role: str) -> int:
    """The leader commits the move: the new placement version. ConfigError when it was
    refused or no sclerotium leads (nothing changed); Uncommitted when a request failed
    on the way, so the move may have been committed or not."""
    body = json.dumps({"vm": vm, "to": to, "as": role}).encode()
    errors, lost = [], False
    for addr in leaders:
        try:
            _, status, reply = await h.call("POST", "/api/v1/primary/move", body, addr)
        except MyceliumError as e:
            errors.append(str(e))
            lost = True
            continue
        if status == 200:
            return int(reply["placement_version"])
        why = reply.get("error", "") if isinstance(reply, dict) else str(reply)
        if status == 421:  # not the leader (any more): ask the next sclerotium
            errors.append(f"{addr}: {why}")
            continue
        raise ConfigError(f"the move of VM {vm} to {to} was refused: {why}")
    if lost:
        raise Uncommitted(f"the move of VM {vm} to {to} may or may not be committed "
                          f"({'; '.join(errors)})")
    raise ConfigError(f"no Raft leader with a majority answered ({'; '.join(errors)}); "
                      "a move needs one: see `mycelium status`")


async def migrate(net: NetworkDir, addrs: list[str], vm: str, to: str,
                  say: Callable[[str], None] = print) -> Result:
    t0 = time.monotonic()
    async with operator_hypha(net, addrs, timeout=90.0) as h:
        replies = await fetch_vms(net, addrs)
        plan = plan_move(replies, vm, to)
        leaders = leaders_first(await h.get("/api/v1/members"))

        async def taken() -> bool:  # the target took one of the primary's checkpoints
            return any(v.get("name") == vm and took_from(v, plan.target_addr) for v in
                       (await h.get("/api/v1/vms", plan.primary_addr)).get("vms") or [])

        if not plan.target_holds:
            if not plan.target_placed:
                say(f"making {to} a backup of {vm} first")
                await _commit(h, leaders, vm, to, "backup")
            await _wait(f"{to} to take a checkpoint of {vm}", BACKUP_WAIT_S, taken)
            say(f"{to} holds a checkpoint of {vm}")
        say(f"final checkpoint of {vm} on {plan.primary} (the guest pauses)")
        _, status, handoff = await h.call("POST", f"/api/v1/vms/{vm}/handoff",
                                          json.dumps({"to": to}).encode(), plan.primary_addr)
        if status != 200:
            why = handoff.get("error") if isinstance(handoff, dict) else handoff
            raise ConfigError(f"{plan.primary} could not hand {vm} off: {why}")
        say(f"{to} took checkpoint {handoff['seq']} ({float(handoff['migrate_s']):.2f} s to take); "
            "committing the move")
        try:
            await _commit(h, leaders, vm, to, "primary")
        except ConfigError:  # refused: nothing changed, the guest runs on where it was
            await h.call("POST", f"/api/v1/vms/{vm}/thaw", b"{}", plan.primary_addr)
            raise
        except Uncommitted as e:  # the placement decides (agent/node/vm/policy.py)
            raise Uncommitted(f"{e}; {vm} stays paused on {plan.primary} until the "
                              f"placement says: it runs on {to} if the move was committed, "
                              f"else it resumes on {plan.primary} a minute after the "
                              "pause") from e

        async def running() -> dict[str, Any] | None:
            for v in (await h.get("/api/v1/vms", plan.target_addr)).get("vms") or []:
                if v.get("name") == vm and v.get("state") == "running" and v.get("running_at"):
                    return v
            return None

        v = await _wait(f"{vm} running on {to}", RUN_WAIT_S, running)
    launched = v.get("launched_at")
    return Result(int(handoff["seq"]), pause_of(handoff, v), time.monotonic() - t0,
                  str(v.get("boot") or ""), float(handoff["migrate_s"]),
                  pause_of(handoff, {"running_at": launched}) if launched else None)
