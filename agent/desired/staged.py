"""Staged state changes: a change that restarts workloads goes through the rollout's waves.

The waves, gate and operator actions are the release rollout's (agent/desired/rollout.py),
applied to the state's *content*: a `Progress` whose `sha256` is the content id of the new
network.yaml (`content_id`) and whose `previous` is the content every node ran before. A
state whose change restarts no workload (no service's definition changed) is recorded as
done at once; one that does is staged: the nodes that host a changed service come first
(a bad manifest fails where it runs, at the first wave), and a node outside the waves
reached keeps applying the previous content, which it kept (DATA/content/<id>.yaml).

A node's gate view is its last applied content (`running`), its apply status, and the
content it last failed to apply (`bad`): a wave whose node failed the new content fails
the rollout. With `auto_rollback` the rollout is `rolled_back` and every node that took it
applies the previous content again: a node-local decision, no envelope is replayed and the
held state keeps its version (anti-rollback holds; going back for good is a new, higher
state whose content is the previous one). Pure.
"""

from __future__ import annotations

import hashlib

from agent.desired.model import DesiredState, RolloutPolicy
from agent.desired.rollout import DONE, ROLLED_BACK, RUNNING, Progress, node_order, taken

CONTENT_ID_HEX = 16  # 64 bits: names this node's own contents, gossiped on every round


def content_id(payload: bytes) -> str:
    """The id of a state's content (its network.yaml bytes, whatever version signs them)."""
    return hashlib.sha256(payload).hexdigest()[:CONTENT_ID_HEX]


def restarting(old: DesiredState | None, new: DesiredState) -> tuple[str, ...]:
    """Services in both states whose definition (image, manifest, env, ports, replicas,
    labels) changed: applying `new` restarts their workloads. Added and removed services
    restart nothing that runs, and are not staged."""
    if old is None:
        return ()
    before = {s.name: s for s in old.endomycetes}
    return tuple(sorted(s.name for s in new.endomycetes
                        if s.name in before and before[s.name] != s))


def last_good(p: Progress | None) -> str:
    """The content every node can return to: the new one once its rollout is done, else
    the one it replaces (a failed or running rollout has not proven its content)."""
    if p is None:
        return ""
    return p.sha256 if p.status == DONE else p.previous


def previous_content(running: list[str], new: str, recorded: Progress | None) -> str:
    """The content a new rollout of `new` starts from: the one most nodes last applied
    (`running`, from gossip), as a release rollout starts from the release most run; the
    last good recorded one breaks a tie and stands in when no node reports one. A state
    that came before the leader recorded the last one is covered: the nodes say what they
    run."""
    counts: dict[str, int] = {}
    for c in running:
        if c and c != new:
            counts[c] = counts.get(c, 0) + 1
    good = last_good(recorded)
    if not counts:
        return good
    best = max(counts.values())
    tied = sorted(c for c, n in counts.items() if n == best)
    return good if good in tied else tied[0]


def begin(new: str, version: int, previous: str, changed: tuple[str, ...],
          hosts: dict[str, tuple[str, ...]], now: float) -> Progress:
    """The leader's first record of the rollout of content `new` (state v`version`) over
    the nodes `hosts` (name -> services it runs). Done at once when nothing restarts or
    nothing came before; otherwise the hosts of a changed service lead the order."""
    names = sorted(hosts)
    staged = bool(changed and previous and previous != new)
    first = [n for n in node_order(new, names) if set(hosts[n]) & set(changed)]
    order = tuple(first + [n for n in node_order(new, names) if n not in first])
    return Progress(new, f"v{version}", order, previous if staged else "", "", 0,
                    RUNNING if staged else DONE, now, 0.0,
                    "" if staged else "no workload restarts", 1, changed if staged else ())


def content_to_apply(p: Progress | None, policy: RolloutPolicy | None, name: str,
                     new: str, mine: str, changes: bool) -> str:
    """Which content node `name` applies now: `new` (the held state's) or the previous one.

    `mine` is the content this node last applied, `changes` whether `new` restarts a
    workload compared with it (its own view, used until the leader has recorded the
    rollout of `new`: a node never runs ahead of the leader's first decision)."""
    if policy is None:
        return new
    if p is None or p.sha256 != new:
        return mine if changes and mine else new
    previous = p.previous or mine
    if p.status == DONE or not previous:
        return new
    if p.status == ROLLED_BACK:
        return previous
    return new if name in taken(p, policy) else previous
