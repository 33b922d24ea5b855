"""The node agent: enrolment, the mutual-TLS API, the Latent spore, the Raft side.

`Agent` is an async context manager that owns its servers and tasks; `run_agent` wires
it with an AsyncExitStack and stops cleanly on SIGTERM/SIGINT. It is wiring: what the node
holds and acts on (the accepted state, the placement, the plan) is one `HeldState`
(agent/node/held.py), through which alone a state is accepted, from any source (push,
gossip pull, seed spore, Primary); what it concludes from gossip are pure functions
(agent/node/decisions.py); the API and the backbone see it through the Protocols they
declare (api.NodeHost, backbone.BackboneHost).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import ssl
import sys
import time
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import tls
from agent.client import PeerClient, fetch_k3s_token
from agent.desired.authority import Decision, PrimaryView, SeedView, decide
from agent.desired.model import DesiredState
from agent.desired.placement import LiveMember
from agent.errors import (
    ConfigError,
    DataError,
    MyceliumError,
    RollbackError,
    StorageError,
    TrustError,
)
from agent.gossip.latent import HttpTransport, LatentSpore, http_routes
from agent.gossip.member import MemberView, PeerMeta, ReleaseMeta, count
from agent.gossip.swim import Event
from agent.node import api
from agent.node.backbone import Backbone
from agent.node.datadir import NodeDir, NodeIdentity
from agent.node.decisions import (
    gossip_primary,
    latent_view,
    pull_placement_from,
    pull_state_from,
    runs_vm,
    sclerotium_in_reach,
    stale_copies,
)
from agent.node.enrol import (
    EnrolService,
    PrimaryLedger,
    enrol,
    enrol_port,
    enrol_server_context,
    split_addr,
)
from agent.node.events import STORAGE, EventLog, RepeatFilter
from agent.node.held import HeldState, shares_from_dict
from agent.node.reconcile import Reconciler
from agent.node.releases import ReleaseStore
from agent.node.rollout import RolloutDriver
from agent.node.seed import SeedLog
from agent.node.selfupdate import HEALTH, RESTART_EXIT, Health, running_release, write_health
from agent.node.staged import StagedChanges
from agent.node.updater import Updater
from agent.node.vm.replicator import backed_up_vms, replicated_vms
from agent.node.vm.runtime import VmRuntime
from agent.node.vm.spec import VmPaths, wanted_vms
from agent.raft.membership import raft_addr
from agent.raft.secrets import demote_proof, secret_check
from agent.serve import Listener
from agent.trust.encoding import dump_json
from agent.trust.envelope import Envelope
from agent.trust.names import check_node_name
from agent.trust.pki import PeerVerdicts, fingerprint
from agent.trust.records import RecordSigner, RecordVerifier
from agent.trust.rules import MAX_ENVELOPE_BYTES
from agent.trust.signed import now_utc
from agent.tuning import (
    ANNOUNCE_TO,
    API_MAX_CONNECTIONS,
    DRIFT_INTERVAL,
    ENROL_MAX_CONNECTIONS,
    GOSSIP_FANOUT,
    GOSSIP_INTERVAL,
    HANDSHAKES_KEPT,
    LOCAL_MAX_CONNECTIONS,
    PRIVATE_DIR,
    PRIVATE_FILE,
    RAFT_REMOVE_AFTER,
    RELEASE_DEADLINE,
    RELEASE_HEALTH_EVERY,
    RELEASE_SERVING,
    SEED_INTERVAL,
    STORAGE_RETRY,
    UNIX_PATH_MAX,
    VM_SYNC_INTERVAL,
)

log = logging.getLogger("mycelium")
READY = "mycelium agent ready"


def server_context(node: NodeDir) -> ssl.SSLContext:
    """Mutual TLS: a client certificate from this network's CA, or no connection at all."""
    return tls.server_context(node.crt, node.key, node.ca_crt)


async def ensure_enrolled(node: NodeDir, listen: str, advertise: str | None,
                          seed_spore: str | None, token: str | None, name: str,
                          join: list[str]) -> NodeIdentity:
    """A node with a certificate rejoins as itself; a fresh one needs a token."""
    if node.enrolled():
        ident = node.identity()
        want = advertise or listen
        if ident.listen != want:
            ident = NodeIdentity(ident.name, ident.role, ident.network_id, want)
            node.write_identity(ident)
        return ident
    check_node_name(name)  # before any network work: the server would refuse it too
    if not token:
        raise ConfigError(f"{node.path} is not enrolled yet: pass --token (from `mycelium "
                          "token create`) and --seed-spore or --join")
    if not seed_spore:
        raise ConfigError("a fresh node needs --seed-spore PATH|URL to learn the network's "
                          "identity")
    from agent.node.enrol import trust_from_token
    from agent.node.seed import read_source

    spore, root, chain = trust_from_token(await read_source(seed_spore), token)
    host, _ = split_addr(advertise or listen)
    peers = list(dict.fromkeys(join + list(spore.bootstrap)))
    node.path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    return await enrol(node, root, chain, token, name, advertise or listen, [host], peers)


@dataclass(frozen=True)
class AgentOptions:
    """How `mycelium agent run` runs a node (its flags, once parsed)."""

    listen: str
    join: tuple[str, ...] = ()
    gossip_interval: float | None = None  # None: network.yaml's, else GOSSIP_INTERVAL
    apply_target: str = ""  # "" never changes the machine (test agents)
    drift_interval: float = DRIFT_INTERVAL
    seed_spore: str | None = None  # read at start and while no sclerotium is in reach
    seed_interval: float = SEED_INTERVAL
    raft_remove_after: float = RAFT_REMOVE_AFTER  # a dead promoted member leaves Raft
    vm_stop_deadline: float = 30.0  # s a VM has to power off on ACPI before it is killed
    release_root: str = ""  # where release venvs and `current` live; "" never installs
    release_site: tuple[str, ...] = ()  # shared dependency dirs for release venvs (tests)
    release_deadline: float = RELEASE_DEADLINE  # s a new release has to report healthy
    # replaces `python -m agent.node.apply` (tests: a stand-in that never changes the host)
    apply_command: tuple[str, ...] = ()


class Agent:
    """Wiring: the servers, the Latent spore, the backbone, the reconciler and the seed
    watch around one `HeldState`. It implements the API's `NodeHost` and the backbone's
    `BackboneHost`."""

    def __init__(self, node: NodeDir, ident: NodeIdentity, opts: AgentOptions) -> None:
        self.node = node
        self.identity = ident
        self.opts = opts
        self.listen = opts.listen
        self.join_peers = list(opts.join)
        self.events = EventLog()
        self.ca_pem = node.ca_crt.read_bytes()
        self._verdicts = PeerVerdicts(self.ca_pem)  # chain verdicts of certificates seen
        # what apply_status() reports when this agent does not reconcile (no --apply-target)
        self.status: dict[str, Any] = {"applied_version": 0, "status": "off"}
        self.started = time.time()  # wall clock: the dashboard shows uptime from it
        self._stack = AsyncExitStack()
        self.peer_ssl = tls.check_after_handshake(
            tls.client_context(node.crt, node.key, node.ca_crt), self.check_peer_cert)
        # after the TLS contexts, which name a file that does not load at all
        node.check_tls_files(node.root())
        node.check_raft_secret()
        self.peers = PeerClient(self.peer_ssl)  # pooled; gossip shares it, revocation resets it
        self.latent: LatentSpore | None = None
        self._pulling: asyncio.Task | None = None
        self.seed_held = 0  # version of the last seed spore read
        self.seed_view = SeedView()
        self.seed_log = SeedLog()  # each seed location's last read and write (dashboard)
        self.primary_members: tuple[str, ...] = ()  # the registry, as last fetched
        self.reconciler: Reconciler | None = None
        self.vms = VmRuntime(node.path, stop_deadline=opts.vm_stop_deadline,
                             on_change=self._on_vm_change, send=self._send_checkpoint,
                             targets=self._vm_backup_addrs,
                             runs_on=lambda vm, node: runs_vm(self.members(), node, vm),
                             majority=self.majority_in_reach)
        self._vm_states: dict[str, str] = {}
        self.backbone: Backbone | None = None
        self._fetching: asyncio.Task | None = None
        self._fingerprint = fingerprint(node.crt.read_bytes())
        # fingerprints of the peer certificates seen in TLS handshakes, newest last
        self._handshakes: OrderedDict[str, None] = OrderedDict()
        self.held = HeldState(node, ident, self.listen, self.events, self.members,
                              on_state=self.on_new_state, on_revoked=self._on_revoked,
                              on_placement=self._on_placement)
        # self-update (agent/node/updater.py): set when the agent should exit to run the
        # release `current` now points to
        self.restart = asyncio.Event()
        self.rollouts = RolloutDriver(self)  # staged rollouts (agent/node/rollout.py)
        self.staged = StagedChanges(self, ident.name)  # staged state changes (node/staged.py)
        self.releases = Updater(self, ident.name, ReleaseStore(node.path / "releases"),
                                running_release(),
                                install=self._install_release if opts.release_root else None,
                                may_install=lambda r: self.rollouts.may_take(ident.name,
                                                                             r.sha256),
                                revert=self._revert_release if opts.release_root else None)

    # --- the held state, as the API and the backbone read it -------------------------

    @property
    def state(self) -> DesiredState | None:
        return self.held.state

    @property
    def held_version(self) -> int:
        return self.held.version

    @property
    def held_sha256(self) -> str:
        return self.held.sha256

    @property
    def held_content(self) -> str:
        return self.held.content

    def shares(self) -> dict[str, Any]:
        return self.held.shares()

    def kept_content(self, cid: str) -> bytes | None:
        return self.node.read_content(cid)

    def applied_content(self) -> str:
        return str(self.reconciler.status.get("content") or "") if self.reconciler else ""

    async def accept_envelope(self, data: bytes, source: str) -> Envelope:
        return await self.held.accept_envelope(data, source)

    def envelope(self) -> bytes | None:
        return self.held.envelope()

    def on_primary(self, version: int, placement: dict[str, Any]) -> None:
        self.held.on_primary(version, placement)

    def live(self) -> list[LiveMember]:
        return self.held.live()

    def k3s_token_local(self) -> str | None:
        return self.held.k3s_token_local()

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        await self._stack.__aenter__()
        try:
            await self._start()
        except BaseException:
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.__aexit__(*exc)

    async def _start(self) -> None:
        from agent.node.revocation import revocation_middleware

        app = web.Application(client_max_size=MAX_ENVELOPE_BYTES + 1024,
                              middlewares=[revocation_middleware(lambda: self.held.revoked,
                                                                 self.ca_pem)])
        app.add_routes(api.routes(self))
        self._stack.push_async_callback(self.peers.close)  # last out: all below may use it
        self.latent = await self._stack.enter_async_context(self._make_latent(app))
        host, port = split_addr(self.listen)
        await self._serve(app, host, port, tls.check_after_handshake(server_context(self.node),
                                                                     self.check_peer_cert),
                          API_MAX_CONNECTIONS)
        await self._serve_local()
        if self.node.ca_key.exists():
            ledger = PrimaryLedger(lambda: self.backbone.primary if self.backbone else None,
                                   lambda: self.held.revoked)
            svc = EnrolService(self.node, self.node.root_chain(), self.peer_addresses, ledger)
            ehost, eport = split_addr(enrol_port(self.listen))
            await self._serve(svc.app(), ehost, eport, enrol_server_context(self.node),
                              ENROL_MAX_CONNECTIONS)
        await self.latent.join(self.join_peers + self.node.peers())
        if self.node.has_raft_secret():
            await self.start_backbone()
        self._stack.push_async_callback(self.stop_backbone)
        self._loop = asyncio.get_running_loop()
        await self._stack.enter_async_context(self.releases)
        health_task = asyncio.create_task(self._write_health())
        self._stack.callback(health_task.cancel)
        rollout_task = asyncio.create_task(self._drive_rollout())
        self._stack.callback(rollout_task.cancel)
        if self.opts.apply_target or self.opts.apply_command:
            self.reconciler = await self._stack.enter_async_context(
                Reconciler(self.node.path, self.opts.apply_target or "@local",
                           self._make_plan, self.opts.drift_interval,
                           prepare=self._fetch_k3s_token, command=self.opts.apply_command))
        seed_task = asyncio.create_task(self._watch_seed())
        self._stack.callback(seed_task.cancel)
        # VMs stop (cleanly) before the servers above: pushed last, run first
        await self._stack.enter_async_context(self.vms)
        vm_task = asyncio.create_task(self._watch_vms())
        self._stack.callback(vm_task.cancel)
        self.events.add("start", f"{self.identity.name} ({self.identity.role}) listening on "
                        f"{self.listen}, state v{self.held_version}")

    async def _serve(self, app: web.Application, host: str, port: int,
                     ctx: ssl.SSLContext, max_connections: int) -> None:
        try:
            await self._stack.enter_async_context(Listener(app, host, port, ctx,
                                                           max_connections))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; pick another "
                              "--listen") from e

    async def _serve_local(self) -> None:
        """The read-only API on DATA/api.sock for the node console (`mycelium tui --local`):
        no TLS and no key, so the socket is 0600 in the 0700 data dir (root only)."""
        local = web.Application()
        local.add_routes(api.local_routes(self))
        path = self.node.api_socket
        if len(str(path).encode()) > UNIX_PATH_MAX:
            log.warning("no local console socket: %s is too long a path", path)
            return
        await self._stack.enter_async_context(Listener(local, "", 0, None,
                                                       LOCAL_MAX_CONNECTIONS,
                                                       unix_path=str(path),
                                                       unix_mode=PRIVATE_FILE))

    def _gossip_pace(self) -> tuple[float, int]:
        """(round interval, fanout): the --gossip-interval flag, else the held state's,
        else the defaults. Applied at start and on every new state (a node that starts at
        v0 would otherwise run the default 200 ms rounds forever)."""
        latent = self.state.spores.latent if self.state is not None else None
        interval = self.opts.gossip_interval or (latent.interval_ms / 1000 if latent else 0)
        return interval or GOSSIP_INTERVAL, latent.fanout if latent else GOSSIP_FANOUT

    def _make_latent(self, app: web.Application) -> LatentSpore:
        interval, fanout = self._gossip_pace()
        # Peers reach us at the advertised address (identity), which may differ from the
        # bind address behind NAT or a proxy.
        latent = LatentSpore(self.identity.name, self.identity.listen,
                             HttpTransport(self.peers),
                             interval=interval, fanout=fanout,
                             get_meta=self.meta, on_event=self._on_gossip_event,
                             on_merge=self._after_merge,
                             # timers on the monotonic clock; the incarnation from wall
                             # time, so a restarted node outranks its previous life
                             clock=time.monotonic, incarnation=int(time.time() * 1000),
                             signer=RecordSigner(self.node.key.read_bytes(),
                                                 self.node.crt.read_bytes()),
                             verifier=RecordVerifier(self.ca_pem, lambda: self.held.revoked))
        app.add_routes(http_routes(lambda: self.latent))
        return latent

    def _on_gossip_event(self, e: Event) -> None:
        if e.kind != "meta":
            self.events.add(e.kind, f"{e.name}: {e.kind} {e.detail}".strip())
        if e.kind in ("joined", "alive"):
            try:
                self.node.save_peers(self.peer_addresses())
            except StorageError as err:  # a cache: gossip goes on without it
                self.events.problem(STORAGE, f"node {self.identity.name} cannot save "
                                    f"its peers: {err}")
        if e.kind in ("joined", "alive", "dead", "left"):
            self.sync_vms()
            if self.reconciler is not None and self.held.share_moved():
                self.reconciler.kick()  # membership moved this node's share

    def _after_merge(self) -> None:
        """A peer holds a newer state: pull it from that peer (one pull at a time)."""
        if self._pulling is not None and not self._pulling.done():
            return
        # Runs on every gossip message: cached member views only, no authority decision.
        if self.latent is None:
            return
        peers = self.latent.views()[1:]
        best = pull_state_from(peers, self.held_version)
        if best is not None:
            self._pulling = asyncio.create_task(self.pull_envelope(best.addr,
                                                                   best.meta.version))
        if self.backbone is None and (self._fetching is None or self._fetching.done()):
            ahead = pull_placement_from(peers, self.held.placement_version)
            if ahead is not None:
                self._fetching = asyncio.create_task(self.fetch_placement(ahead.addr))

    def _on_revoked(self) -> None:
        """A peer revoked after we connected to it must not keep its pooled connection."""
        if self.latent is not None:
            self.latent.transport.reset()

    def _on_placement(self) -> None:
        self.sync_vms()
        self.refresh_meta()
        if self.reconciler is not None and self.held.share_moved():
            self.reconciler.kick()

    # --- state ------------------------------------------------------------------------

    def on_new_state(self) -> None:
        """Hook for the reconcile loop and gossip meta refresh."""
        self.sync_vms()
        if self.latent is not None:
            self.latent.interval, self.latent.fanout = self._gossip_pace()
            self.latent.refresh()
            asyncio.get_running_loop().create_task(self._announce())
        if self.reconciler is not None:
            self.reconciler.kick()
        self.releases.kick()
        self._prune_contents()

    async def _announce(self) -> None:
        """Push the new version to a few peers now rather than at the next round."""
        if self.latent is not None:
            await self.latent.join(self.peer_addresses()[:ANNOUNCE_TO])

    async def pull_envelope(self, addr: str, version: int) -> None:
        if version <= self.held_version:
            return
        url = f"https://{addr}{api.API}/envelope"
        try:
            data = await self.peers.get_bytes(url, cap=MAX_ENVELOPE_BYTES)
        except MyceliumError as e:
            log.debug("pull from %s failed: %s", addr, e)
            return
        try:
            await self.accept_envelope(data, source=f"gossip from {addr}")
        except DataError:
            pass  # counted and logged by accept_envelope
        except StorageError:  # reported by accept_envelope; no retry on every message
            await asyncio.sleep(STORAGE_RETRY)

    def sclerotium_in_reach(self) -> bool:
        return self.backbone is not None or sclerotium_in_reach(self.members())

    def seed_locations(self) -> list[str]:
        extra = list(self.state.spores.seed.locations) if self.state else []
        return list(dict.fromkeys(([self.opts.seed_spore] if self.opts.seed_spore else [])
                                  + extra))

    async def _watch_seed(self) -> None:
        """Seed > Latent: read the seed spore at start and whenever no sclerotium is in
        reach; a newer state in it is accepted (through the trust checks) and its bootstrap
        addresses are joined."""
        first = True
        while True:
            try:
                if first or not self.sclerotium_in_reach():
                    await self.read_seed()
            except Exception:  # a bad read must not end the watch
                log.exception("reading the seed spore failed")
            first = False
            await asyncio.sleep(self.opts.seed_interval)

    async def read_seed(self) -> None:
        from agent.node.seed import read_source
        from agent.trust.spore import verify_spore

        for loc in self.seed_locations():
            try:
                spore, _ = verify_spore(await read_source(loc), self.held.root, now_utc(),
                                        self.ca_pem, self.held.revoked, held_version=self.seed_held)
            except RollbackError:  # read fine, nothing newer than what it gave before
                self.seed_log.note(loc, "read", True, f"v{self.seed_held}, nothing newer")
                continue
            except MyceliumError as e:
                log.debug("seed spore %s: %s", loc, e)
                self.seed_log.note(loc, "read", False, str(e))
                continue
            self.seed_log.note(loc, "read", True, f"v{spore.version}")
            self.seed_held = spore.version
            signed = (spore.envelope or {}).get("signed")
            self.seed_view = SeedView(True, count((signed or {}).get("version")),
                                      spore.bootstrap)
            if isinstance(signed, dict) and count(signed.get("version")) > self.held_version:
                try:
                    await self.accept_envelope(dump_json(spore.envelope), f"seed spore {loc}")
                except DataError:
                    pass  # counted and logged by accept_envelope
            if spore.bootstrap and self.latent is not None:
                await self.latent.join([a for a in spore.bootstrap if a != self.listen])

    def check_peer_cert(self, der: bytes) -> None:
        """Inside every TLS handshake, both ways: refuse a revoked peer, and remember the
        certificate of one we let in (the Primary registry takes only those)."""
        fp = self._verdicts.check(der, self.held.revoked).fingerprint
        self._handshakes[fp] = None
        self._handshakes.move_to_end(fp)
        while len(self._handshakes) > HANDSHAKES_KEPT:
            self._handshakes.popitem(last=False)

    def seen_in_handshake(self, fp: str) -> bool:
        """This certificate is ours, or a peer showed it in a TLS handshake with us."""
        return fp == self._fingerprint or fp in self._handshakes

    # --- what gossip carries about this node ------------------------------------------

    def meta(self) -> dict[str, Any]:
        raft = self.backbone.meta() if self.backbone else PeerMeta().raft
        return PeerMeta(self.identity.role, self.held_version, self.held_sha256,
                        self.apply_status(), self._fingerprint, self.held.placement_version,
                        raft, self._release_meta()).to_wire()

    def refresh_meta(self) -> None:
        if self.latent is not None:
            self.latent.refresh()

    def apply_status(self) -> dict[str, Any]:
        summary = self.reconciler.summary() if self.reconciler else self.status
        vms, ckpt, rep = self.vms.summary(), self.vms.checkpoints(), self.vms.replication_meta()
        return {**summary, **({"vms": vms} if vms else {}), **({"ckpt": ckpt} if ckpt else {}),
                **({"rep": rep} if rep else {})}

    # --- authority --------------------------------------------------------------------

    def _primary_view(self) -> PrimaryView:
        bb = self.backbone
        if bb is not None and bb.primary is not None:
            v = bb.primary.read()
            return PrimaryView(True, bb.primary.is_leader(), bb.primary.has_quorum(),
                               v["version"], tuple(sorted(v["members"])),
                               v["placement_version"])
        return gossip_primary(self.members(), self.primary_members)

    def decision(self) -> Decision:
        """Primary > Seed > Latent for this node, from what each source says now."""
        return decide(self._primary_view(), self.seed_view, latent_view(self.members()),
                      self.held.placement_version)

    def majority_in_reach(self) -> bool:
        """A Raft leader with a majority is in reach (so its placements reach us)."""
        p = self._primary_view()
        return p.reachable and p.has_quorum

    def gossip_interval(self) -> float:
        return self.latent.interval if self.latent else self._gossip_pace()[0]

    def may_place(self) -> bool:
        return self.decision().may_place

    async def fetch_placement(self, addr: str) -> None:
        """A node without a Raft replica asks a sclerotium for the committed placement."""
        try:
            view = await self.peers.get_json(f"https://{addr}{api.API}/primary")
        except MyceliumError as e:
            log.debug("placement from %s: %s", addr, e)
            return
        if isinstance(view, dict) and isinstance(view.get("placement"), dict):
            self.on_primary(count(view.get("placement_version")), view["placement"])
            if isinstance(view.get("members"), dict):
                self.primary_members = tuple(sorted(view["members"]))

    # --- VMs (endophytes this node is primary for) -------------------------------------

    def sync_vms(self) -> None:
        """Start and stop VMs to match this node's share now (idempotent, cheap)."""
        share = self.held.share()
        wanted = wanted_vms(self.state, share)
        stale = stale_copies(self.members(), self.identity.name, self.held.placement_version,
                             wanted)
        for name in stale:
            if name in self.vms.vms:
                log.warning("vm %s: a node on a newer placement runs it: stopping the copy "
                            "here", name)
        self.vms.apply({n: s for n, s in wanted.items() if n not in stale},
                       backed_up_vms(self.state, share), replicated_vms(self.state, share))

    def _vm_backup_addrs(self, name: str) -> list[str]:
        """API addresses of the live nodes placed as backups of VM `name`."""
        nodes = {n for n, s in self.held.shares().items()
                 if name in s.endophytes_backup and n != self.identity.name}
        return [m.addr for m in self.members() if m.name in nodes and m.alive]

    async def _send_checkpoint(self, addr: str, name: str, frame: bytes) -> int:
        reply = await self.peers.request("POST", f"https://{addr}{api.API}/vms/{name}/checkpoint",
                                         data=frame, timeout=api.CHECKPOINT_DEADLINE)
        if reply.status not in (200, 202):  # 202: a part of a split frame, kept
            log.warning("vm %s: checkpoint to %s: %s %s", name, addr, reply.status,
                        reply.body[:200].decode(errors="replace"))
        return reply.status

    async def offer_checkpoint(self, name: str, frame: bytes, by: str) -> int | None:
        share = self.held.shares().get(by)
        if share is None or name not in share.endophytes_primary:
            raise TrustError(f"node {by} is not the primary of VM {name} in the placement "
                             "held here")
        held = await asyncio.to_thread(self.vms.offer, name, frame)
        return None if held is None else held.seq

    def vm_backups(self) -> list[dict[str, Any]]:
        return self.vms.backup_status()

    async def hand_off_vm(self, name: str, to: str) -> dict[str, Any]:
        """The final checkpoint of a planned move of VM `name` to backup node `to`."""
        addr = next((m.addr for m in self.members() if m.name == to and m.alive), None)
        if addr is None:
            raise ValueError(f"node {to} is not a live member here")
        return await self.vms.hand_off(name, to, addr)

    async def thaw_vm(self, name: str) -> None:
        await self.vms.thaw(name)

    async def move_vm(self, name: str, to: str, role: str) -> int:
        """Leader: commit the placement with VM `name` moved to node `to` as `role`."""
        from agent.desired.moves import move
        from agent.node.vm.replicator import replicable_vms

        bb = self.backbone
        if bb is None or bb.primary is None or not self.may_place():
            raise LookupError(f"{self.identity.name} is not the Raft leader with a majority; "
                              "ask the leader (see `mycelium status`)")
        if self.state is None or role not in ("primary", "backup"):
            raise ValueError("no state held yet" if self.state is None else
                             f"role must be primary or backup, not {role!r}")
        view = bb.primary.read()
        version = view["placement_version"] + 1
        live = {m.name for m in self.live()}
        new = move(self.state, shares_from_dict(view["placement"]), live, name, to,
                   role, version, replicable_vms(self.state))  # type: ignore[arg-type]
        shares = {n: asdict(s) for n, s in new.items()}
        if not await bb.primary.put_placement(version, {"state_version": self.held_version,
                                                        "shares": shares}):
            raise ValueError("the placement changed meanwhile; try again")
        self.events.add("placement", f"VM {name} moved to {to} as {role} by the operator "
                        f"(placement v{version})")
        self.on_primary(version, {"state_version": self.held_version, "shares": shares})
        return version

    async def _watch_vms(self) -> None:
        """Catch what no event announced (a placement computed from gossip changing as
        members come and go)."""
        while True:
            try:
                self.sync_vms()
                if self.vms.replicators:  # buffer, throttle and lag in gossip (`rep`)
                    self.refresh_meta()
            except Exception:  # a bad sync must not end the watch
                log.exception("syncing VMs failed")
            await asyncio.sleep(VM_SYNC_INTERVAL)

    def _on_vm_change(self) -> None:
        """A VM changed state: gossip says so when the summary changed."""
        states = self.vms.summary()
        if states != self._vm_states:
            self._vm_states = states
            self.refresh_meta()

    def vm_status(self) -> list[dict[str, Any]]:
        return self.vms.status()

    def vm_paths(self, name: str) -> VmPaths | None:
        return self.vms.paths(name) if name in self.vms.vms else None

    # --- the Raft side ----------------------------------------------------------------

    async def start_backbone(self) -> None:
        if self.backbone is None:
            self.backbone = await Backbone(self, self.node, self.identity, self.listen,
                                           self.opts.raft_remove_after).__aenter__()

    async def stop_backbone(self, purge: bool = False) -> None:
        if self.backbone is not None:
            bb, self.backbone = self.backbone, None
            await bb.stop(purge)
            self.refresh_meta()

    async def promote(self, secret: str, by: str) -> None:
        """Only a secret that matches the check value this node got at enrolment is used:
        an attacker with any certificate cannot hand us a Raft cluster of its own."""
        if self.backbone is not None:
            return
        check = self.node.read_raft_check()
        if check is None or not hmac.compare_digest(check, secret_check(secret.encode())):
            self.events.add("refused", f"promotion by {by}: the Raft secret does not verify")
            raise TrustError("the Raft secret does not verify against this node's check value")
        self.node.write_raft_secret(secret.encode())
        await self.start_backbone()
        self.events.add("raft", f"promoted to dynamic sclerotium by {by}")

    async def demote(self, proof: str, by: str) -> None:
        """Only the leader our own Raft side follows (or, once we are out of the cluster and
        follow nobody, any holder of the secret) may stop it, proving the secret."""
        bb = self.backbone
        if bb is None:
            return
        leader = (bb.view() or {}).get("leader") or ""
        lead = next((m for m in self.members() if raft_addr(m.addr) == leader), None)
        if leader and (lead is None or lead.name != by):
            self.events.add("refused", f"demotion by {by}: our Raft leader is {leader}")
            raise TrustError(f"{by} does not lead this node's Raft cluster")
        want = demote_proof(self.node.read_raft_secret(), self.identity.name)
        if not hmac.compare_digest(proof, want):
            self.events.add("refused", f"demotion by {by}: bad proof")
            raise TrustError("the demotion proof does not verify")
        await self.stop_backbone(purge=True)
        self.events.add("raft", f"demoted by {by}: Raft side stopped, secret removed")

    def primary_view(self) -> dict[str, Any] | None:
        return self.backbone.view() if self.backbone is not None else None

    async def _fetch_k3s_token(self) -> None:
        """A K3s agent needs the cluster token: sclerotia derive it, others ask a live
        sclerotium once and keep it in the data dir (0600)."""
        share = self.held.share()
        if share is None or share.k3s_role != "agent" or self.held.k3s_token():
            return
        addrs = [m.addr for m in self.members() if m.meta.role == "sclerotium" and m.alive]
        token = await fetch_k3s_token(addrs, self.peer_ssl)
        if token:
            self.node.write_k3s_token(token)

    # --- views for the API ------------------------------------------------------------

    def node_info(self) -> dict[str, Any]:
        return {"name": self.identity.name, "role": self.identity.role,
                "network_id": self.identity.network_id, "listen": self.listen,
                "version": self.held_version, "sha256": self.held_sha256,
                "fingerprint": self._fingerprint,
                "status": self.apply_status(), "counters": self.held.counters,
                # the dashboard's uptime, and its last-reconcile view (with a failure's output)
                "started": self.started,
                "reconcile": self.reconciler.status if self.reconciler else self.status,
                "seed": self.seed_log.to_dict(),
                "release": {**self.releases.meta().to_wire(), "served": self.releases.served,
                            "fetched_from": self.releases.fetched_from},
                "gossip": {"interval_s": self.latent.interval, "fanout": self.latent.fanout}
                if self.latent else None,
                "problem": "; ".join(self.events.problems.values())}

    def members(self) -> list[MemberView]:
        return self.latent.views() if self.latent else []

    # --- releases (self-update) --------------------------------------------------------

    def _release_meta(self) -> ReleaseMeta:
        """What this node runs and holds, releases rolled back here, and the rollout
        progress its Raft replica holds."""
        bad: tuple[str, ...] = ()
        if self.opts.release_root:
            from agent.node.selfupdate import ReleaseRoot

            bad = tuple(ReleaseRoot(Path(self.opts.release_root)).bad()[-8:])
        return replace(self.releases.meta(), bad=bad, rollout=self.rollouts.local() or {},
                       content_rollout=self.staged.local() or {})

    def primary_store(self) -> Any:
        return self.backbone.primary if self.backbone is not None else None

    def rollout_view(self, kind: str = "release") -> dict[str, Any]:
        return self.staged.view() if kind == "state" else self.rollouts.view()

    async def rollout_act(self, action: str, kind: str = "release") -> dict[str, Any]:
        driver = self.staged if kind == "state" else self.rollouts
        return (await driver.act(action)).to_dict()

    def _make_plan(self) -> Any:
        """The plan of the held state, or of the previous content while a staged change
        keeps this node on it (agent/node/staged.py)."""
        chosen, _ = self.staged.pick()
        return self.held.make_plan(chosen)

    def _prune_contents(self) -> None:
        """Kept contents: the held one, the one applied, the staged change's previous, and
        the three newest others."""
        p = self.staged.progress()
        keep = {self.held.content, self.applied_content(), self.staged.chosen,
                *((p.previous,) if p else ())}
        try:
            self.node.prune_contents(keep)
        except OSError as e:  # kept copies only: the next state tries again
            log.warning("cannot prune kept contents: %s", e)

    async def _drive_rollout(self) -> None:
        while True:
            for tick in (self.rollouts.tick, self.staged.tick):
                try:
                    await tick()
                except MyceliumError as e:  # no leader reachable for the commit: next tick
                    log.debug("rollout tick: %s", e)
                except Exception:  # a bad tick must not end the loop
                    log.exception("rollout tick failed")
            try:
                if self.reconciler is not None and self.staged.pick()[1]:
                    self.reconciler.kick()  # a wave came, or the change was rolled back
            except Exception:
                log.exception("choosing the content to apply failed")
            await asyncio.sleep(1.0)

    async def _revert_release(self) -> None:
        """A rollout with auto_rollback failed: if this node runs that release, switch
        back to the one it ran before (its venv is kept) and restart."""
        from agent.desired.model import Release
        from agent.desired.rollout import ROLLED_BACK
        from agent.node.selfupdate import ReleaseRoot

        p = self.rollouts.progress()
        running = self.releases.running.running
        if p is None or p.status != ROLLED_BACK or running != p.sha256 or self.restart.is_set():
            return
        root = ReleaseRoot(Path(self.opts.release_root))
        found = root.venv_of(p.previous) if p.previous else None
        if found is None:
            self.events.add("release", f"{self.identity.name} cannot return from release "
                            f"{p.version}: no venv of the previous release is kept")
            return
        venv, version = found
        await asyncio.to_thread(root.switch, Release(version, p.previous), venv,
                                self.opts.release_deadline)
        self.events.add("release", f"{self.identity.name} returns to release {version} (the "
                        f"rollout of {p.version} was rolled back); restarting")
        self.restart.set()

    def release_file(self, sha256: str) -> Path | None:
        return self.releases.store.file(sha256)

    def release_serving(self, delta: int) -> bool:
        if delta > 0 and self.releases.serving >= RELEASE_SERVING:
            return False
        self.releases.serving += delta
        self.releases.served += max(delta, 0)
        return True

    def _install_release(self, want: Any, artifact: Path, manifest: Any) -> None:
        """In a worker thread: install beside the running venv, switch `current`, restart."""
        import platform

        from agent.node.selfupdate import ReleaseRoot
        from agent.trust.release import runs_on

        root = ReleaseRoot(Path(self.opts.release_root))
        if not runs_on(manifest, platform.machine()):
            raise DataError(f"release {want.version} has wheels for "
                            f"{', '.join(manifest.architectures)}, this node is "
                            f"{platform.machine()}")
        if want.sha256 in root.bad():
            raise DataError(f"release {want.version} was rolled back on this node; waiting "
                            "for a newer one")
        venv = root.install(want, artifact, manifest,
                            extra_site=tuple(Path(p) for p in self.opts.release_site))
        root.switch(want, venv, self.opts.release_deadline)
        self.events.add("release", f"{self.identity.name} switched to release {want.version}; "
                        "restarting")
        self._loop.call_soon_threadsafe(self.restart.set)

    async def _write_health(self) -> None:
        """DATA/health.json for the watchdog outside this process (agent/node/selfupdate.py):
        written at start and when what it says changes (an SD card is not worn by a
        heartbeat); nothing in the agent reads it back."""
        said = None
        while True:
            others = [m for m in self.members() if m.name != self.identity.name]
            health = Health(self.releases.running.running, time.time(), True,
                            any(m.alive for m in others) or not others,
                            str(self.apply_status().get("status", "")))
            if replace(health, at=0) != said:
                try:
                    await asyncio.to_thread(write_health, self.node.path / HEALTH, health)
                    said = replace(health, at=0)
                except StorageError as e:
                    log.warning("cannot write %s: %s", HEALTH, e)
            await asyncio.sleep(RELEASE_HEALTH_EVERY)

    def peer_addresses(self) -> list[str]:
        return [m.addr for m in self.members() if m.alive]

    def convergence(self) -> dict[str, Any]:
        return {m.name: {"version": m.meta.version, "state": m.state, **m.meta.status}
                for m in self.members()}

    def share_info(self) -> dict[str, Any]:
        share = self.held.share()
        return {"node": self.identity.name, "authority": self.held.authority(),
                "placement_version": self.held.placement_version,
                "decision": asdict(self.decision()),
                "share": asdict(share) if share else None, "apply": self.apply_status(),
                "vms": self.vm_status()}


async def run_agent(data_dir: str, opts: AgentOptions, *, advertise: str | None,
                    token: str | None, name: str, log_level: str = "INFO") -> int:
    logging.basicConfig(stream=sys.stdout, level=getattr(logging, log_level.upper(), 20),
                        format="%(asctime)s %(levelname)s %(message)s")
    for h in logging.getLogger().handlers:  # a failure that repeats: one line a minute
        h.addFilter(RepeatFilter())
    node = NodeDir(Path(data_dir))
    ident = await ensure_enrolled(node, opts.listen, advertise, opts.seed_spore, token, name,
                                  list(opts.join))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Agent(node, ident, opts) as agent:
        print(f"{READY}: {ident.name} ({ident.role}) on {advertise or opts.listen}, "
              f"state v{agent.held_version}", flush=True)
        t0 = time.monotonic()
        stopped = asyncio.create_task(stop.wait())
        restart = asyncio.create_task(agent.restart.wait())
        await asyncio.wait([stopped, restart], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        restart.cancel()
        await agent.latent.leave()
        log.info("stopping after %.0f s", time.monotonic() - t0)
    if agent.restart.is_set():
        print(f"mycelium agent: exiting with {RESTART_EXIT} to run the new release",
              flush=True)
        return RESTART_EXIT
    return 0
