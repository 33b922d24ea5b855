"""What a node holds and acts on: the accepted state, the placement, and the plan.

One object owns them so that the rules of acceptance sit in one place:
- a state enters only through `accept_envelope` (push, gossip pull, seed spore, Primary),
  which applies the trust rules and persists crash-safely before anything sees the new
  version; the revocation list and the held version change together. Verifying and
  parsing run in a worker thread: a large network.yaml takes seconds of pure-Python YAML
  parsing, and the event loop must keep answering gossip meanwhile (peers declared a node
  dead that parsed 252 KB on its loop). A disk that refuses the write is a StorageError
  naming the node, the version and the cause, reported once per episode (events.problem);
- the placement this node acts on is the one a Raft leader last committed, adopted only
  when newer and kept on disk (a node cut off from the Primary keeps acting on it);
  before any was committed, every node computes the same one from gossip;
- the plan is this node's share of the state, with the settings it runs under.
Every file it touches goes through the data-dir class (agent/node/datadir.py). What it
must tell the rest of the node (a new state, a new revocation list, a new placement) it
tells through the callbacks it is given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from agent.desired.model import DesiredState, NodeShare
from agent.desired.placement import LiveMember, live_members, place
from agent.desired.plan import NodePlan, NodeSettings, plan_node
from agent.desired.schema import parse_state
from agent.desired.staged import content_id
from agent.errors import DataError, MyceliumError, StorageError
from agent.gossip.member import MemberView
from agent.node.datadir import NodeDir, NodeIdentity
from agent.node.decisions import committed_share, member_checkpoints, placement_seen
from agent.node.events import STORAGE, EventLog
from agent.raft.secrets import k3s_token
from agent.trust.envelope import Envelope
from agent.trust.root import Root
from agent.trust.rules import verify_envelope
from agent.trust.signed import now_utc
from recipes.params import AgentParams

log = logging.getLogger("mycelium")


def _nothing() -> None:
    return None


class HeldState:
    def __init__(self, node: NodeDir, ident: NodeIdentity, listen: str, events: EventLog,
                 members: Callable[[], list[MemberView]], *,
                 on_state: Callable[[], None] = _nothing,
                 on_revoked: Callable[[], None] = _nothing,
                 on_placement: Callable[[], None] = _nothing) -> None:
        """`members`: the membership table now; `on_state` runs after a state was
        accepted, `on_revoked` when the revocation list changed, `on_placement` after a
        newer placement was adopted."""
        self.node = node
        self.identity = ident
        self.listen = listen
        self.events = events
        self.members = members
        self.on_state, self.on_revoked, self.on_placement = on_state, on_revoked, on_placement
        self.root = node.root()
        self.state: DesiredState | None = None
        self.version = node.store.version()
        self.sha256 = ""
        self.content = ""  # content_id of the held state (agent/desired/staged.py)
        self.revoked: set[str] = set()
        self.counters = {"refused_envelopes": 0}
        self.last_share: NodeShare | None = None  # the share the last plan was made for
        self._lock = asyncio.Lock()
        self.placement_version, self.placement = load_placement(self.node)
        for said in node.check_contents():  # before the held state writes its own again
            events.add("error", f"kept state content refused: {said}")
        self._load_held()

    # --- the state --------------------------------------------------------------------

    def _load_held(self) -> None:
        """A held envelope that no longer parses or verifies (torn, a flipped byte) is
        refused, by name, and the node holds one version less than it recorded: gossip then
        pulls the recorded version again from a peer. Replay protection keeps the recorded
        version as its floor (`accept_envelope` takes that version again, nothing older)."""
        try:
            held = self.node.held()
            if held is not None:
                self._keep_content(held[0])
                self._adopt(*held)
        except MyceliumError as e:
            self.version = max(self.version - 1, 0)
            self.events.add("error", f"held envelope {self.node.store.envelope_path} refused "
                            f"({e}); pulling state v{self.version + 1} again from peers")

    def _adopt(self, env: Envelope, state: DesiredState) -> None:
        self.state = state
        self.version = env.version
        self.sha256 = env.sha256
        self.content = content_id(env.payload)
        revoked = set(state.revoked)
        changed = revoked != self.revoked
        self.revoked = revoked
        if changed:
            self.on_revoked()

    async def accept_envelope(self, data: bytes, source: str) -> Envelope:
        """The only way a state enters the node: verify, parse, persist, then announce."""
        async with self._lock:
            try:
                env, state = await asyncio.to_thread(verified_state, data, self.root,
                                                     self.version)
            except DataError as e:
                self.counters["refused_envelopes"] += 1
                self.events.add("refused", f"state from {source}: {e}")
                raise
            try:
                await asyncio.to_thread(self.node.store.record, env.version, data,
                                        again=self.state is None)
            except StorageError as e:
                raise self._cannot_store(f"state v{env.version}", e) from e
            self.events.solved(STORAGE)
            await asyncio.to_thread(self._keep_content, env)  # fsync: off the event loop
            self._adopt(env, state)
            self.events.add("state", f"accepted state v{env.version} from {source}",
                            version=env.version)
        self.on_state()
        return env

    def _keep_content(self, env: Envelope) -> None:
        """Keep the state's content for a staged change (agent/node/staged.py); a node that
        cannot keep it applies the new state as it is."""
        try:
            self.node.write_content(content_id(env.payload), env.payload)
        except StorageError as e:
            log.warning("cannot keep the content of state v%s: %s", env.version, e)

    def _cannot_store(self, what: str, e: StorageError) -> StorageError:
        """`node n1 cannot store state v5: no space left on device in DIR (free some
        space)`, as one event per episode however often it is retried."""
        err = StorageError(f"node {self.identity.name} cannot store {what}: {e}", e.errno)
        self.events.problem(STORAGE, str(err))
        return err

    def envelope(self) -> bytes | None:
        """The accepted envelope as it was signed (what peers pull)."""
        return self.node.store.envelope()

    # --- placement --------------------------------------------------------------------


    def on_primary(self, version: int, placement: dict[str, Any]) -> None:
        """A placement committed by the leader (read from the local Raft replica or fetched
        from a sclerotium): adopt it if newer, keep it on disk, re-plan if the share moved."""
        if version <= self.placement_version:
            return
        try:
            shares = shares_from_dict(placement)
        except (TypeError, AttributeError) as e:
            log.warning("placement v%s unreadable: %s", version, e)
            return
        try:
            self.node.write_placement(version, placement)
        except StorageError as e:  # not adopted: the next tick or fetch tries again
            self._cannot_store(f"placement v{version}", e)
            return
        self.placement_version, self.placement = version, shares
        self.events.add("placement", f"placement v{version} committed by the leader")
        self.on_placement()

    def authority(self) -> str:
        """Where this node's share comes from: the Primary's committed placement once a
        leader has committed one (kept when the Primary is out of reach: a minority makes
        no new placement), else every node computes the same one from gossip."""
        return "primary" if self.placement_version else "latent"

    def live(self) -> list[LiveMember]:
        """Members to place on, as this node's gossip sees them."""
        if self.state is None:
            return []
        ident = self.identity
        members = self.members()
        return live_members(self.state, placement_seen(members, ident.name, ident.role,
                                                       ident.listen),
                            member_checkpoints(members))

    def share(self) -> NodeShare | None:
        if self.state is None:
            return None
        if self.placement_version:
            return committed_share(self.placement, self.placement_version,
                                   self.identity.name, self.identity.role)
        return place(self.state, self.live(), version=self.version).get(self.identity.name)

    def shares(self) -> dict[str, NodeShare]:
        """Every node's share, as share() reads its own (VM replication finds backups)."""
        if self.state is None:
            return {}
        if self.placement_version:
            return self.placement
        return place(self.state, self.live(), version=self.version)

    def share_moved(self) -> bool:
        """The share differs from the one the last plan was made for."""
        return self.share() != self.last_share

    # --- the plan ---------------------------------------------------------------------

    def k3s_token_local(self) -> str | None:
        """The K3s token a sclerotium derives from its Raft secret (None elsewhere)."""
        if not self.node.has_raft_secret():
            return None
        return k3s_token(self.node.read_raft_secret())

    def k3s_token(self) -> str:
        return self.k3s_token_local() or self.node.read_k3s_token()

    def make_plan(self, content: tuple[str, DesiredState] | None = None) -> NodePlan | None:
        """This node's plan for the held state, or for `content` (id, state): the previous
        content a staged change keeps it on (agent/node/staged.py)."""
        share = self.share()
        self.last_share = share
        cid, state = content or (self.content, self.state)
        if state is None or share is None:
            return None
        plan = plan_node(state, self.version, self.identity.name, share,
                         NodeSettings(AgentParams(data_dir=str(self.node.path),
                                                  listen=self.listen), self.k3s_token()))
        return replace(plan, content=cid)


def verified_state(data: bytes, root: Root, held: int) -> tuple[Envelope, DesiredState]:
    """The trust rules, then the schema (before anything is stored): pure CPU work, run in
    a worker thread."""
    env = verify_envelope(data, root, held, now_utc())
    return env, parse_state(env.payload, f"state v{env.version}")


def load_placement(node: NodeDir) -> tuple[int, dict[str, NodeShare]]:
    """The placement this node last adopted (our own file; unreadable means none)."""
    saved = node.read_placement()
    if saved is None:
        return 0, {}
    try:
        return saved[0], shares_from_dict(saved[1])
    except (TypeError, AttributeError):
        return 0, {}


def shares_from_dict(placement: dict[str, Any]) -> dict[str, NodeShare]:
    """A committed placement's shares, as the Primary stores them (lists for tuples)."""
    out = {}
    for name, d in (placement.get("shares") or {}).items():
        out[name] = NodeShare(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in d.items()})
    return out


def strip_version(p: dict[str, NodeShare]) -> dict[str, Any]:
    """A placement without its version stamp: what changed is the assignment."""
    return {n: {**asdict(s), "placement_version": 0} for n, s in p.items()}
