"""The node's side of self-update: get the release network.yaml names, then hand it over.

`fetch_release` tries the peers whose gossip says they hold the artifact (in a random
order, so a new release spreads from many nodes rather than one), then the state's
`url`. Every copy is hashed while it streams in and checked against its manifest before
it takes its name in DATA/releases; a copy with the wrong hash is refused (one event
naming the peer) and the next source is tried. Once held, the node serves it too.

`Updater` runs that whenever the state names a release this node neither runs nor holds,
with a back-off after failures, and, where the agent manages its own venvs
(`--release-root`), installs and switches to it through `agent/node/selfupdate.py` and
asks the daemon to restart. It sees its node through `ReleaseHost`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from agent.client import PeerClient
from agent.desired.model import DesiredState, Release
from agent.errors import BusyError, DataError, MyceliumError, StorageError, TransportError
from agent.gossip.member import MemberView, ReleaseMeta
from agent.node.events import EventLog
from agent.node.releases import MAX_ARTIFACT_BYTES, ReleaseStore, verify
from agent.trust.release import Manifest, check_sha256
from agent.tuning import (
    INSTALL_RETRY_MAX,
    INSTALL_RETRY_MIN,
    RELEASE_CHECK,
    RELEASE_FETCH_TIMEOUT,
    RELEASE_RETRY_MAX,
)

log = logging.getLogger("mycelium")
RELEASE_PATH = "/api/v1/release"


class ReleaseHost(Protocol):
    """What the updater needs from its node."""

    @property
    def events(self) -> EventLog: ...
    @property
    def peers(self) -> PeerClient: ...
    @property
    def state(self) -> DesiredState | None: ...

    def members(self) -> list[MemberView]: ...
    def refresh_meta(self) -> None: ...


def holders(members: list[MemberView], sha256: str, shuffle: Callable = random.shuffle
            ) -> list[str]:
    """Addresses of live peers that say they hold the artifact, in a random order."""
    addrs = [m.addr for m in members if m.alive and sha256 in m.meta.release.held]
    shuffle(addrs)
    return addrs


async def fetch_release(want: Release, sources: list[str], store: ReleaseStore,
                        peers: PeerClient, events: EventLog, who: str,
                        public: PeerClient | None = None) -> tuple[Manifest, str]:
    """(manifest, source) of the first good copy among peer `sources`, then `want.url`.
    TransportError naming every source tried when none gave one; BusyError when every peer
    that holds it was busy serving others (soon one of those will hold it too)."""
    tried: list[str] = []
    busy = 0
    peer_plan = [(f"peer {a}", f"https://{a}{RELEASE_PATH}/{want.sha256}", peers)
                 for a in sources]
    web = [(want.url, want.url, public or PeerClient())] \
        if want.url.startswith(("http://", "https://")) else []
    for plan in (peer_plan, web):
        if plan is web and sources and busy == len(sources):
            # every holder is busy: one of the nodes they serve will hold it in a moment;
            # the operator's url is for when the network has no copy
            if web and web[0][2] is not public:
                await web[0][2].close()
            raise BusyError(f"release {want.version}: every holder is busy")
        for source, url, client in plan:
            tmp = store.incoming()
            try:
                got = await client.download(url, tmp, MAX_ARTIFACT_BYTES,
                                            RELEASE_FETCH_TIMEOUT)
                check_sha256(got, want.sha256, source)
                manifest = await asyncio.to_thread(store.admit, tmp, want.sha256,
                                                   want.version, source)
                return manifest, source
            except DataError as e:
                events.add("release", f"{who} refused release {want.version} from {source}: "
                           f"{e}")
                tried.append(f"{source}: refused")
            except BusyError:
                busy += 1
                tried.append(f"{source}: busy")
            except TransportError as e:
                tried.append(f"{source}: {e}")
            finally:
                tmp.unlink(missing_ok=True)
                if client is not peers and client is not public:
                    await client.close()
    if want.url.startswith("/"):
        try:
            sha, manifest = await asyncio.to_thread(store.add, Path(want.url), want.sha256)
            return manifest, want.url
        except (DataError, OSError) as e:
            tried.append(f"{want.url}: {e}")
    raise TransportError(f"release {want.version} ({want.sha256[:12]}): no source gave it ("
                         + ("; ".join(tried) or "no peer holds it and no url") + ")")


def install_retry_delay(failed: int) -> float:
    """Seconds before another install of a release that failed `failed` times."""
    return min(INSTALL_RETRY_MIN * 2 ** (failed - 1), INSTALL_RETRY_MAX)


class Updater:
    """Keeps this node on the release its state names (an async context manager)."""

    def __init__(self, host: ReleaseHost, name: str, store: ReleaseStore,
                 running: ReleaseMeta, install: Callable[[Release, Path, Manifest], None]
                 | None = None, check: float = RELEASE_CHECK,
                 may_install: Callable[[Release], bool] = lambda _: True,
                 revert: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.name = name
        self.store = store
        self.running = running
        self.install = install  # blocking: install, switch, then the daemon restarts
        self.check = check
        self.may_install = may_install  # a staged rollout: is this node in the wave yet?
        self.revert = revert  # a rollout rolled back: return to the previous release
        self._waiting: set[str] = set()
        self.served = 0  # artifacts served to peers (the API counts them)
        self.serving = 0  # downloads being served now (at most RELEASE_SERVING)
        self.fetched_from: dict[str, str] = {}  # sha256 -> where this node got it
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._held: tuple[str, ...] = tuple(store.held())
        self._failures = 0
        self.clock = clock
        # sha256 -> (failed installs, when the next may start): a pip failure or a full
        # disk is tried again, slower each time, not in a loop and not only after a restart
        self._installs: dict[str, tuple[int, float]] = {}

    async def __aenter__(self) -> Updater:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def kick(self) -> None:
        self._kick.set()

    def meta(self) -> ReleaseMeta:
        return ReleaseMeta(self.running.running, self.running.version, self._held[-8:],
                           fixed=self.install is None)

    def wanted(self) -> Release | None:
        state = self.host.state
        want = state.release if state is not None else None
        return None if want is None or want.sha256 == self.running.running else want

    async def _run(self) -> None:
        while True:
            delay = self.check
            try:
                if (ok := await self.step()) is None:  # holders busy: soon, not later
                    delay = random.uniform(0.3, 1.0)
                elif not ok:
                    self._failures += 1
                    delay = min(self.check * 2 ** self._failures, RELEASE_RETRY_MAX)
                else:
                    self._failures = 0
            except Exception:  # a bad step must not end the loop
                log.exception("release update step failed")
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), delay)
            except TimeoutError:
                pass

    async def step(self) -> bool | None:
        """One look: fetch what is wanted and missing, install it where we may. False when
        a fetch failed (the loop backs off), None when every holder was busy."""
        self._note_held()
        if self.revert is not None:
            await self.revert()
        want = self.wanted()
        if want is None:
            return True
        if self.store.file(want.sha256) is None:
            try:
                _, source = await fetch_release(want, holders(self.host.members(), want.sha256),
                                                self.store, self.host.peers, self.host.events,
                                                self.name)
            except BusyError:
                return None
            except (TransportError, StorageError) as e:
                log.info("%s", e)
                return False
            self.fetched_from[want.sha256] = source
            self.host.events.add("release", f"{self.name} holds release {want.version} "
                                 f"({want.sha256[:12]}) from {source}")
            self._note_held()
        if self.install is not None and not self.may_install(want):
            if want.sha256 not in self._waiting:
                self._waiting.add(want.sha256)
                self.host.events.add("release", f"{self.name} holds release {want.version} "
                                     "and waits for its rollout wave")
            return True
        if self.install is not None:
            failed, at = self._installs.get(want.sha256, (0, 0.0))
            if self.clock() < at:
                return True
            self._installs[want.sha256] = (failed, math.inf)  # one install at a time
            path = self.store.file(want.sha256)
            assert path is not None
            try:  # its own copy again, whole: a disk can rot what a peer sent well
                manifest = await asyncio.to_thread(verify, path, want.sha256, want.version,
                                                   f"{self.name}'s own copy")
            except DataError as e:
                self.host.events.add("release", f"{e}; deleted, fetching it again")
                path.unlink(missing_ok=True)
                self._installs.pop(want.sha256, None)
                return False
            try:
                await asyncio.to_thread(self.install, want, path, manifest)
            except MyceliumError as e:
                delay = install_retry_delay(failed + 1)
                self._installs[want.sha256] = (failed + 1, self.clock() + delay)
                self.host.events.add("release", f"{self.name} did not install release "
                                     f"{want.version}: {e}; trying again in {delay:.0f} s")
        return True

    def _note_held(self) -> None:
        held = tuple(self.store.held())
        if held != self._held:
            self._held = held
            self.host.refresh_meta()
