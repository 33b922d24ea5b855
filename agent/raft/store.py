"""The Primary spore: Raft-replicated record on the sclerotia (pysyncobj).

Holds the latest accepted envelope, the member registry, placements and the uses of join
tokens (so a token used up at one sclerotium is refused at every other). Split of work:
the node that proposes an envelope has already verified it with agent/trust/rules.py (expiry
depends on the clock, so it cannot be re-checked deterministically); the replicated apply
only enforces "version strictly higher than held, else no-op", which every replica
computes identically.

pysyncobj unpickles what arrives on its port, so it always runs with a password derived
from the network's Raft secret (its connections are then encrypted and authenticated
before anything is deserialised), and with a cap on each frame's declared length checked
before it is buffered (agent/raft/frames.py). Its journal and full dump live in the data
dir (0600): they are pickles of our own state, read only from our own disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import FAIL_REASON

from agent.errors import PeerError
from agent.raft import frames
from agent.raft.appends import skip_known
from agent.raft.journal import align_journal
from agent.raft.secrets import raft_password
from agent.tuning import RAFT_ELECTION, RAFT_HEARTBEAT, RAFT_RECONNECT, RAFT_TICK

log = logging.getLogger(__name__)
frames.install()  # a frame cap before buffering on the Raft port (agent/raft/frames.py)

# Tuned on loopback (PLATFORM.md): ~11 ms commits, ~0.5 s failover, vs ~100 ms default.
TIMERS = {"autoTickPeriod": RAFT_TICK, "appendEntriesUseBatch": False,
          "appendEntriesPeriod": RAFT_HEARTBEAT, "raftMinTimeout": RAFT_ELECTION[0],
          "raftMaxTimeout": RAFT_ELECTION[1], "connectionRetryTime": RAFT_RECONNECT,
          # a leader that hears no majority for this long steps down (default: 30 s)
          "leaderFallbackTimeout": RAFT_ELECTION[0]}


class PrimaryStore(SyncObj):
    """Replicated state; mutators are @replicated and deterministic.

    The replicated fields have class-level defaults and are first set on the instance by
    a mutator: SyncObj treats every instance attribute that exists when its __init__ ends
    as its own and leaves it out of the full dump, so state set in __init__ would vanish
    at the first log compaction (found by tests/test_primary_crash.py). Mutators replace
    the containers instead of changing them in place for the same reason.
    """

    envelope: bytes | None = None
    version: int = 0
    sha256: str = ""
    members: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - never mutated in place
    placement: dict[str, Any] = {}  # noqa: RUF012
    placement_version: int = 0
    dynamic: dict[str, str] = {}  # noqa: RUF012 - promoted rhizomorphs: name -> Raft address
    tokens: dict[str, tuple[str, ...]] = {}  # noqa: RUF012 - join token id -> names it admitted
    rollout: dict[str, Any] = {}  # noqa: RUF012 - release rollout progress (agent/desired/rollout.py)
    # a staged state change's progress (agent/desired/staged.py)
    content_rollout: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, self_addr: str, others: list[str], secret: bytes, data_dir: Path,
                 **conf: Any) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dropped = align_journal(data_dir / "raft.journal", data_dir / "raft.dump")
        if dropped:
            log.info("journal: dropped %d entries already in the full dump", dropped)
        # useFork=False: a forked dump writer outlives a SIGKILLed agent and would race the
        # restarted one for raft.dump.tmp; our state is small enough to dump inline.
        cfg = SyncObjConf(useFork=False, password=raft_password(secret),
                          bindAddress=conf.pop("bind", None),
                          journalFile=str(data_dir / "raft.journal"),
                          fullDumpFile=str(data_dir / "raft.dump"),
                          dynamicMembershipChange=True, **{**TIMERS, **conf})
        self._swept = 0.0  # set before SyncObj's __init__ ends: local, never replicated
        super().__init__(self_addr, others, cfg)
        for f in data_dir.glob("raft.*"):
            os.chmod(f, 0o600)

    def set_pace(self, heartbeat: float, election: tuple[float, float]) -> None:
        """Raft's timers after start (agent/tuning.py `raft_pace`); pysyncobj reads them
        from its config at every use. The leader's fallback and our lease follow the
        shortest election timeout."""
        conf = self._SyncObj__conf
        conf.appendEntriesPeriod = heartbeat
        conf.raftMinTimeout, conf.raftMaxTimeout = election
        conf.leaderFallbackTimeout = election[0]

    def election_timeout(self) -> float:
        return float(self._SyncObj__conf.raftMinTimeout)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's
        super()._onTick(timeToWait)
        now = time.monotonic()
        if now - self._swept >= 1.0:  # strangers on the Raft port meet their deadline
            self._swept = now
            frames.sweep(self._poller)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        """pysyncobj's handler, after `skip_known` dropped what this log already holds
        from an AppendEntries (agent/raft/appends.py says why)."""
        if isinstance(message, dict) and message.get("type") == "append_entries" \
                and "prevLogIdx" in message and message.get("transmission") is None:
            ours = self._SyncObj__getEntries(message["prevLogIdx"])
            if ours and ours[0][2] == message["prevLogTerm"]:
                fixed = skip_known(message["prevLogIdx"], message.get("entries", []), ours,
                                   self._SyncObj__raftCommitIndex)
                if fixed is not None:
                    message = {**message, "prevLogIdx": fixed[0], "prevLogTerm": fixed[1],
                               "entries": fixed[2]}
        super()._SyncObj__onMessageReceived(node, message)

    @replicated
    def put_envelope(self, version: int, sha256: str, data: bytes) -> bool:
        if version <= self.version:
            return False
        self.envelope, self.version, self.sha256 = data, version, sha256
        return True

    @replicated
    def register(self, name: str, fingerprint: str, role: str, addresses: list[str]) -> None:
        self.members = {**self.members, name: {"fingerprint": fingerprint, "role": role,
                                               "addresses": list(addresses)}}

    @replicated
    def put_placement(self, version: int, placement: dict[str, Any]) -> bool:
        if version <= self.placement_version:
            return False
        self.placement, self.placement_version = placement, version
        return True

    @replicated
    def set_dynamic(self, name: str, raft_addr: str | None) -> None:
        """Record (or, with None, forget) a rhizomorph promoted to dynamic sclerotium."""
        d = {k: v for k, v in self.dynamic.items() if k != name}
        self.dynamic = {**d, name: raft_addr} if raft_addr else d

    @replicated
    def claim_token(self, token_id: str, uses: int, name: str) -> bool:
        """Count one use of a join token; False once it has admitted `uses` nodes (0, from
        tokens older than the field, counts as 1). One entry per enrolment: small."""
        used = self.tokens.get(token_id, ())
        if len(used) >= max(uses, 1):
            return False
        self.tokens = {**self.tokens, token_id: (*used, name)}
        return True

    @replicated
    def put_rollout(self, progress: dict[str, Any]) -> bool:
        """Record rollout progress; only a higher `seq` (or another release) replaces it,
        so a stale writer (an old leader, an operator racing the leader) changes nothing.
        `kind: state` in the progress puts it in the staged state change's slot (a key in
        the argument, not a new replicated method: pysyncobj numbers methods by name, and
        a new one would shift the numbers a node running an older release uses)."""
        content = progress.get("kind") == "state"
        held = self.content_rollout if content else self.rollout
        same = progress.get("sha256") == held.get("sha256")
        if same and int(progress.get("seq", 0)) <= int(held.get("seq", 0)):
            return False
        if content:
            self.content_rollout = dict(progress)
        else:
            self.rollout = dict(progress)
        return True

    def raft_members(self) -> list[str]:
        """Every Raft member's address, this one included (read on the caller's thread)."""
        return sorted([self.selfNode.id, *(n.id for n in self.otherNodes)])


class PrimarySpore:
    """Async adapter: proposals return awaitables, resolved on the loop from Raft's thread."""

    def __init__(self, store: PrimaryStore) -> None:
        self.store = store

    async def _call(self, method: Any, *args: Any, timeout: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def done(result: Any, error: int) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if error == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    fut.set_exception(PeerError(f"Raft commit failed ({error})"))
            loop.call_soon_threadsafe(settle)

        method(*args, callback=done)
        return await asyncio.wait_for(fut, timeout)

    async def put_envelope(self, version: int, sha256: str, data: bytes) -> bool:
        """Caller has verified the envelope; returns False if not newer than held."""
        return await self._call(self.store.put_envelope, version, sha256, data)

    async def register(self, name: str, fingerprint: str, role: str,
                       addresses: list[str]) -> None:
        await self._call(self.store.register, name, fingerprint, role, addresses)

    async def put_placement(self, version: int, placement: dict[str, Any]) -> bool:
        if not self.store._isLeader():
            raise PeerError("placement is decided by the Raft leader only")
        return await self._call(self.store.put_placement, version, placement)

    async def set_dynamic(self, name: str, raft_addr: str | None) -> None:
        await self._call(self.store.set_dynamic, name, raft_addr)

    async def claim_token(self, token_id: str, uses: int, name: str) -> bool:
        """Committed through the leader (from a follower too); PeerError without one."""
        return await self._call(self.store.claim_token, token_id, uses, name)

    async def put_rollout(self, progress: dict[str, Any]) -> bool:
        """Committed through the leader (from a follower too); PeerError without one."""
        return await self._call(self.store.put_rollout, progress)

    async def add_member(self, raft_addr: str) -> None:
        await self._call(self.store.addNodeToCluster, raft_addr, timeout=10.0)

    async def remove_member(self, raft_addr: str) -> None:
        await self._call(self.store.removeNodeFromCluster, raft_addr, timeout=10.0)

    def is_leader(self) -> bool:
        return bool(self.store._isLeader()) and bool(self.store._isReady())

    def term(self) -> int:
        """The Raft term this replica is in (pysyncobj keeps it private)."""
        return int(self.store._SyncObj__raftCurrentTerm)

    def has_quorum(self) -> bool:
        """A leader that reaches a majority, or a follower that reaches such a leader."""
        s = self.store
        if s._isLeader():
            # A lease: a majority answered within the shortest election timeout. A leader
            # that was paused (SIGSTOP, a starved CPU) keeps its connections and believes
            # it leads until its Raft thread reads the newer term; it must not place or
            # publish meanwhile (issue 12 §3).
            heard = s._SyncObj__lastResponseTime  # pysyncobj keeps it private
            since = time.monotonic() - s.election_timeout()
            fresh = sum(1 for n in s.otherNodes
                        if s.isNodeConnected(n) and heard.get(n, 0.0) > since)
            return 1 + fresh > (len(s.otherNodes) + 1) / 2
        leader = s._getLeader()
        return leader is not None and s.isNodeConnected(leader)

    def read(self) -> dict[str, Any]:
        """Local read; followers may lag, so it says so."""
        s = self.store
        leader = s._getLeader()
        return {"version": s.version, "sha256": s.sha256, "members": dict(s.members),
                "placement_version": s.placement_version, "placement": dict(s.placement),
                "raft_members": s.raft_members(), "dynamic": dict(s.dynamic),
                "rollout": dict(s.rollout), "content_rollout": dict(s.content_rollout),
                "possibly_stale": not s._isLeader(), "term": self.term(),
                "election_timeout": s.election_timeout(),
                "leader": leader.id if leader is not None else ""}
