"""Staged state changes on a node: the leader drives them, every node picks its content.

The rules are agent/desired/staged.py and agent/desired/rollout.py (pure). Here: the Raft
leader, while it holds a quorum and the state has a `rollout:` policy, records the rollout
of each new state content in the Primary spore's second slot (`put_rollout` with `kind:
state`, a higher `seq` only) and steps it from what gossip says of the nodes (the content
each last applied, its apply status, the content it failed to apply); every replica
gossips the progress it holds. Every node with a reconciler asks `choose` before each
apply: the held state, or the previous content it kept (DATA/content/<id>.yaml) while its
wave has not come, or again once the rollout was rolled back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Any, Protocol

from agent.desired.model import DesiredState, NodeShare
from agent.desired.rollout import NodeView, Progress, step, taken
from agent.desired.schema import parse_state
from agent.desired.staged import begin, content_to_apply, previous_content, restarting
from agent.errors import DataError
from agent.gossip.member import MemberView
from agent.node.events import EventLog
from agent.node.rollout import commit_action
from agent.raft.store import PrimarySpore

log = logging.getLogger("mycelium")
KIND = "state"  # the Primary slot and the gate's wording (agent/desired/rollout.py)
PARSED_KEPT = 4  # contents parsed and kept in memory


class StagedHost(Protocol):
    @property
    def events(self) -> EventLog: ...
    @property
    def state(self) -> DesiredState | None: ...
    @property
    def held_version(self) -> int: ...
    @property
    def held_content(self) -> str:
        """content_id of the held state."""

    def members(self) -> list[MemberView]: ...
    def refresh_meta(self) -> None: ...
    def primary_store(self) -> PrimarySpore | None: ...
    def shares(self) -> dict[str, NodeShare]: ...

    def kept_content(self, cid: str) -> bytes | None:
        """A content this node kept (DataError when the kept copy is damaged)."""

    def applied_content(self) -> str:
        """The content this node last applied without failure ("" without a reconciler)."""


def content_views(members: list[MemberView]) -> dict[str, NodeView]:
    """The gate's view of each node: the content it last applied, whether its apply is
    failing, the content it last failed to apply."""
    out = {}
    for m in members:
        if m.meta.role == "hypha":
            continue
        s = m.meta.status
        got, bad = s.get("content"), s.get("content_bad")
        out[m.name] = NodeView(m.name, m.alive, got if isinstance(got, str) else "",
                               m.meta.apply_status not in ("failed", "degraded"),
                               (bad,) if isinstance(bad, str) and bad else ())
    return out


class StagedChanges:
    def __init__(self, host: StagedHost, name: str) -> None:
        self.host = host
        self.name = name
        self._parsed: dict[str, DesiredState] = {}
        self._seen_seq = 0
        self.chosen = ""  # the content the last plan was made from

    def local(self) -> dict[str, Any] | None:
        primary = self.host.primary_store()
        return primary.read().get("content_rollout") or None if primary is not None else None

    def progress(self) -> Progress | None:
        """The newest progress for the held content: the local replica's, or the highest
        seq any node gossips."""
        local = self.local()
        found = [Progress.from_dict(local)] if local else []
        found += [Progress.from_dict(m.meta.release.content_rollout)
                  for m in self.host.members() if m.meta.release.content_rollout]
        mine = [p for p in found if p is not None and p.sha256 == self.host.held_content]
        return max(mine, key=lambda p: p.seq) if mine else None

    def kept(self, cid: str) -> DesiredState | None:
        """A kept content, parsed (it was verified when it was held)."""
        if not cid:
            return None
        if cid == self.host.held_content:
            return self.host.state
        if cid not in self._parsed:
            try:
                data = self.host.kept_content(cid)
                if data is None:
                    return None
                state = parse_state(data, f"kept content {cid}")
            except DataError as e:
                self.host.events.add("error", f"{self.name}: {e}")
                return None
            if len(self._parsed) >= PARSED_KEPT:
                self._parsed.pop(next(iter(self._parsed)))
            self._parsed[cid] = state
        return self._parsed[cid]

    def choose(self) -> tuple[str, DesiredState] | None:
        """The content to apply when it is not the held state's, else None."""
        state, new = self.host.state, self.host.held_content
        if state is None or state.rollout is None:
            return None
        mine = self.host.applied_content()
        changes = False
        if mine and mine != new:  # what it runs, not kept (damaged): wait for the leader
            before = self.kept(mine)
            changes = before is None or bool(restarting(before, state))
        cid = content_to_apply(self.progress(), state.rollout, self.name, new, mine, changes)
        old = self.kept(cid) if cid != new else None
        if old is None and cid != new and mine and mine != cid:
            cid, old = mine, self.kept(mine)  # the rollout's previous is not kept here
        return (cid, old) if old is not None else None

    def pick(self) -> tuple[tuple[str, DesiredState] | None, bool]:
        """`choose`, and whether its answer changed since the last pick (then re-plan);
        an event when this node goes (back) to the previous content."""
        chosen = self.choose()
        cid = chosen[0] if chosen else self.host.held_content
        changed = cid != self.chosen
        if changed and self.chosen and chosen is not None:
            p = self.progress()
            why = (f"the staged change of state {p.version} was {p.status}" if p and
                   p.status not in ("running", "paused") else "until its wave comes")
            self.host.events.add("staged", f"{self.name} applies the previous content "
                                 f"{cid} ({why})")
        self.chosen = cid
        return chosen, changed

    async def tick(self, now: float | None = None) -> None:
        """On the leader with a quorum: record or step the rollout of the held content.
        On every replica: gossip the progress it holds when it changed."""
        primary = self.host.primary_store()
        if primary is None:
            return
        local = Progress.from_dict(self.local())
        if local is not None and local.seq != self._seen_seq:
            self._seen_seq = local.seq
            self.host.refresh_meta()
        state = self.host.state
        if (state is None or state.rollout is None or not self.host.held_content
                or not (primary.is_leader() and primary.has_quorum())):
            return
        now = time.time() if now is None else now
        views = content_views(self.host.members())
        if local is None or local.sha256 != self.host.held_content:
            previous = previous_content([v.running for v in views.values()],
                                        self.host.held_content, local)
            old = self.kept(previous)
            changed = (restarting(old, state) if old is not None
                       else tuple(s.name for s in state.endomycetes))  # not kept: assume all
            shares = self.host.shares()
            hosts = {n: shares[n].endomycetes if n in shares else () for n in views}
            new = begin(self.host.held_content, self.host.held_version, previous, changed,
                        hosts, now)
            if local is not None:
                new = replace(new, seq=local.seq + 1)
        else:
            new = step(local, state.rollout, views, now, kind=KIND)
        if new != local and await primary.put_rollout({**new.to_dict(), "kind": KIND}):
            self._note(local, new, state)

    def _note(self, old: Progress | None, new: Progress, state: DesiredState) -> None:
        assert state.rollout is not None
        if old is None or old.sha256 != new.sha256:
            if new.status == "done":
                return  # nothing restarts: every node applies it at once, as without waves
            self.host.events.add("staged", f"staged change of state {new.version} started "
                                 f"(restarts {', '.join(new.services)}): wave 1 is "
                                 f"{', '.join(taken(new, state.rollout))}")
        elif new.status != old.status:
            self.host.events.add("staged", f"staged change of state {new.version} "
                                 f"{new.status}" + (f": {new.reason}" if new.reason else ""))
        elif new.wave != old.wave:
            self.host.events.add("staged", f"staged change of state {new.version}: wave "
                                 f"{new.wave + 1} is {', '.join(taken(new, state.rollout))}")

    async def act(self, action: str) -> Progress:
        """The operator's pause | resume | abort of the staged change (as the release
        rollout's, agent/node/rollout.py)."""
        new = await commit_action(self.host.primary_store(), self.progress, action,
                                  {"kind": KIND}, "no staged change of the held state is "
                                  "recorded")
        self.host.events.add("staged", f"staged change of state {new.version}: {action} by "
                             "the operator")
        return new

    def view(self) -> dict[str, Any]:
        """GET /api/v1/rollout?kind=state: the policy, the progress, each node's content."""
        state = self.host.state
        p = self.progress()
        policy = state.rollout if state is not None else None
        return {"kind": KIND, "state": {"version": self.host.held_version,
                                        "content": self.host.held_content},
                "policy": asdict(policy) if policy else None,
                "progress": p.to_dict() if p else None,
                "allowed": list(taken(p, policy)) if p and policy else [],
                "nodes": {name: {"state": "alive" if v.alive else "not alive",
                                 "content": v.running, "bad": list(v.bad),
                                 "healthy": v.healthy}
                          for name, v in content_views(self.host.members()).items()}}
