"""The node agent: enrolment, the mutual-TLS API, the Latent spore, accepting states.

`Agent` is an async context manager that owns its servers and tasks; `run_agent` wires
it with an AsyncExitStack and stops cleanly on SIGTERM/SIGINT. A state is accepted from
any source (push, gossip pull, seed spore) only through `accept_envelope`, which applies
the trust rules and persists crash-safely before anything else sees the new version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent import api
from agent.authority import Decision, LatentView, PrimaryView, SeedView, decide
from agent.backbone import Backbone, shares_from_dict
from agent.client import check_after_handshake, client_context, fetch_k3s_token
from agent.derive import k3s_token
from agent.desired import DesiredState, NodeShare
from agent.enroll import EnrolService, enrol, enrol_port, enrol_server_context, split_addr
from agent.envelope import Envelope
from agent.errors import ConfigError, DataError, MyceliumError
from agent.events import EventLog
from agent.gossip import HttpTransport, LatentSpore, http_routes
from agent.nodedir import NodeDir, NodeIdentity
from agent.pki import fingerprint
from agent.placement import LiveMember, live_members, place
from agent.plan import NodePlan, NodeSettings, plan_node
from agent.reconcile import Reconciler
from agent.schema import parse_state
from agent.serial import dump_json
from agent.signed import now_utc
from agent.statefile import atomic_write
from agent.swim import Event, Member
from agent.trust import MAX_ENVELOPE_BYTES, verify_envelope
from recipes.params import AgentParams

log = logging.getLogger("mycelium")
READY = "mycelium agent ready"


def server_context(node: NodeDir) -> ssl.SSLContext:
    """Mutual TLS: a client certificate from this network's CA, or no connection at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(node.crt, node.key)
    ctx.load_verify_locations(cafile=str(node.ca_crt))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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
    if not token:
        raise ConfigError(f"{node.path} is not enrolled yet: pass --token (from `mycelium "
                          "token create`) and --seed-spore or --join")
    if not seed_spore:
        raise ConfigError("a fresh node needs --seed-spore PATH|URL to learn the network's "
                          "identity")
    from agent.enroll import trust_from_token
    from agent.seed import read_source

    spore, root, chain = trust_from_token(await read_source(seed_spore), token)
    host, _ = split_addr(advertise or listen)
    peers = list(dict.fromkeys(join + list(spore.bootstrap)))
    node.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return await enrol(node, root, chain, token, name, advertise or listen, [host], peers)


@dataclass(frozen=True)
class AgentOptions:
    """How `mycelium agent run` runs a node (its flags, once parsed)."""

    listen: str
    join: tuple[str, ...] = ()
    gossip_interval: float | None = None  # None: network.yaml's, else 0.2 s
    apply_target: str = ""  # "" never changes the machine (test agents)
    drift_interval: float = 300.0
    seed_spore: str | None = None  # read at start and while no sclerotium is in reach
    seed_interval: float = 30.0
    raft_remove_after: float = 60.0  # a dead promoted member leaves the Raft membership


class Agent:
    def __init__(self, node: NodeDir, ident: NodeIdentity, opts: AgentOptions) -> None:
        self.node = node
        self.identity = ident
        self.opts = opts
        self.listen = opts.listen
        self.join_peers = list(opts.join)
        self.events = EventLog()
        self.root = node.root()
        self.ca_pem = node.ca_crt.read_bytes()
        self.state: DesiredState | None = None
        self.held_version = node.store.version()
        self.held_sha256 = ""
        self.revoked: set[str] = set()
        # what apply_status() reports when this agent does not reconcile (no --apply-target)
        self.status: dict[str, Any] = {"applied_version": 0, "status": "off"}
        self.counters = {"refused_envelopes": 0}
        self._lock = asyncio.Lock()
        self._stack = AsyncExitStack()
        self.peer_ssl = check_after_handshake(client_context(node.crt, node.key, node.ca_crt),
                                              self.check_peer_cert)
        self.latent: LatentSpore | None = None
        self._pulling: asyncio.Task | None = None
        self.seed_held = 0  # version of the last seed spore read
        self.seed_view = SeedView()
        self.primary_members: tuple[str, ...] = ()  # the registry, as last fetched
        self.reconciler: Reconciler | None = None
        self._last_share: NodeShare | None = None
        self.backbone: Backbone | None = None
        # the last placement committed by a Raft leader that this node saw (kept on disk:
        # a node cut off from the Primary keeps acting on it)
        self.placement_version, self.placement = load_placement(node)
        self._fetching: asyncio.Task | None = None
        self._fingerprint = fingerprint(node.crt.read_bytes())
        self._load_held()

    def _load_held(self) -> None:
        try:
            held = self.node.held()
            if held is not None:
                self._adopt(*held)
        except MyceliumError as e:
            self.events.add("error", f"held envelope unreadable ({e}); waiting for a new one")

    def _adopt(self, env: Envelope, state: DesiredState) -> None:
        self.state = state
        self.held_version = env.version
        self.held_sha256 = env.sha256
        revoked = set(self.state.revoked)
        if revoked != self.revoked and self.latent is not None:
            self.latent.transport.reset()
        self.revoked = revoked

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
        from agent.pki import revocation_middleware

        app = web.Application(client_max_size=MAX_ENVELOPE_BYTES + 1024,
                              middlewares=[revocation_middleware(lambda: self.revoked,
                                                                 self.ca_pem)])
        app.add_routes(api.routes(self))
        self.latent = await self._stack.enter_async_context(self._make_latent(app))
        host, port = split_addr(self.listen)
        await self._serve(app, host, port, check_after_handshake(server_context(self.node),
                                                                 self.check_peer_cert))
        if self.node.ca_key.exists():
            svc = EnrolService(self.node, self.node.root_chain(), self.peer_addresses)
            ehost, eport = split_addr(enrol_port(self.listen))
            await self._serve(svc.app(), ehost, eport, enrol_server_context(self.node))
        await self.latent.join(self.join_peers + self.node.peers())
        if self.node.raft_secret.exists():
            await self.start_backbone()
        self._stack.push_async_callback(self.stop_backbone)
        if self.opts.apply_target:
            self.reconciler = await self._stack.enter_async_context(
                Reconciler(self.node.path, self.opts.apply_target, self.make_plan,
                           self.opts.drift_interval, prepare=self._fetch_k3s_token))
        seed_task = asyncio.create_task(self._watch_seed())
        self._stack.callback(seed_task.cancel)
        self.events.add("start", f"{self.identity.name} ({self.identity.role}) listening on "
                        f"{self.listen}, state v{self.held_version}")

    async def _serve(self, app: web.Application, host: str, port: int,
                     ctx: ssl.SSLContext) -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, ssl_context=ctx, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; pick another "
                              "--listen") from e

    def _make_latent(self, app: web.Application) -> LatentSpore:
        interval = self.opts.gossip_interval
        fanout = 3
        if self.state is not None:
            interval = interval or self.state.spores.latent.interval_ms / 1000
            fanout = self.state.spores.latent.fanout
        # Peers reach us at the advertised address (identity), which may differ from the
        # bind address behind NAT or a proxy.
        latent = LatentSpore(self.identity.name, self.identity.listen,
                             HttpTransport(self.peer_ssl),
                             interval=interval or 0.2, fanout=fanout, get_meta=self.meta,
                             on_event=self._on_gossip_event, on_merge=self._after_merge)
        app.add_routes(http_routes(lambda: self.latent))
        return latent

    def _on_gossip_event(self, e: Event) -> None:
        if e.kind != "meta":
            self.events.add(e.kind, f"{e.name}: {e.kind} {e.detail}".strip())
        if e.kind in ("joined", "alive"):
            self.node.save_peers(self.peer_addresses())
        if e.kind in ("joined", "alive", "dead", "left") and self.reconciler is not None:
            if self.share() != self._last_share:
                self.reconciler.kick()  # membership moved this node's share

    def _after_merge(self) -> None:
        """A peer holds a newer state: pull it from that peer (one pull at a time)."""
        if self._pulling is not None and not self._pulling.done():
            return
        # Runs on every gossip message: read the membership table, build no views.
        if self.latent is None:
            return
        best = max((m for m in self.latent.ms.members.values() if m.state == "alive"),
                   key=_meta_version, default=None)
        if best and _meta_version(best) > self.held_version:
            self._pulling = asyncio.create_task(self.pull_envelope(best.addr,
                                                                   _meta_version(best)))
        if self.backbone is None and (self._fetching is None or self._fetching.done()):
            ahead = max((m for m in self.latent.ms.members.values() if m.state == "alive"
                         and (m.meta.get("raft") or {}).get("addr")),
                        key=lambda m: _int(m.meta.get("pv")), default=None)
            if ahead and _int(ahead.meta.get("pv")) > self.placement_version:
                self._fetching = asyncio.create_task(self.fetch_placement(ahead.addr))

    # --- state ------------------------------------------------------------------------

    async def accept_envelope(self, data: bytes, source: str) -> Envelope:
        """The only way a state enters the node: verify, parse, persist, then announce."""
        async with self._lock:
            try:
                env = verify_envelope(data, self.root, self.held_version, now_utc())
                state = parse_state(env.payload, f"state v{env.version}")  # before storing
            except DataError as e:
                self.counters["refused_envelopes"] += 1
                self.events.add("refused", f"state from {source}: {e}")
                raise
            self.node.store.record(env.version, data)
            self._adopt(env, state)
            self.events.add("state", f"accepted state v{env.version} from {source}",
                            version=env.version)
        self.on_new_state()
        return env

    def on_new_state(self) -> None:
        """Hook for the reconcile loop and gossip meta refresh."""
        if self.latent is not None:
            self.latent.refresh()
            asyncio.get_running_loop().create_task(self._announce())
        if self.reconciler is not None:
            self.reconciler.kick()

    async def _announce(self) -> None:
        """Push the new version to a few peers now rather than at the next round."""
        if self.latent is not None:
            await self.latent.join([m["addr"] for m in self.members()
                                    if m.get("state") == "alive"][:8])

    async def pull_envelope(self, addr: str, version: int) -> None:
        if version <= self.held_version:
            return
        url = f"https://{addr}{api.API}/envelope"
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                async with s.get(url, ssl=self.peer_ssl) as r:
                    if r.status != 200:
                        return
                    data = await r.content.read(MAX_ENVELOPE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, MyceliumError) as e:
            log.debug("pull from %s failed: %s", addr, e)
            return
        try:
            await self.accept_envelope(data, source=f"gossip from {addr}")
        except DataError:
            pass  # counted and logged by accept_envelope

    def sclerotium_in_reach(self) -> bool:
        return self.backbone is not None or any(
            m.get("state") == "alive" and (m.get("raft") or {}).get("addr")
            for m in self.members())

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
        from agent.seed import read_source
        from agent.spore import verify_spore

        for loc in self.seed_locations():
            try:
                spore, _ = verify_spore(await read_source(loc), self.root, now_utc(),
                                        self.ca_pem, self.revoked, held_version=self.seed_held)
            except MyceliumError as e:
                log.debug("seed spore %s: %s", loc, e)
                continue
            self.seed_held = spore.version
            signed = (spore.envelope or {}).get("signed")
            self.seed_view = SeedView(True, _int((signed or {}).get("version")), spore.bootstrap)
            if isinstance(signed, dict) and _int(signed.get("version")) > self.held_version:
                try:
                    await self.accept_envelope(dump_json(spore.envelope), f"seed spore {loc}")
                except DataError:
                    pass  # counted and logged by accept_envelope
            if spore.bootstrap and self.latent is not None:
                await self.latent.join([a for a in spore.bootstrap if a != self.listen])

    def check_peer_cert(self, der: bytes) -> None:
        from agent.pki import check_peer

        check_peer(der, self.ca_pem, self.revoked)

    # --- views for the API ------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {"role": self.identity.role, "version": self.held_version,
                "sha256": self.held_sha256, "status": self.apply_status(),
                "fp": self._fingerprint, "pv": self.placement_version,
                **({"raft": r} if self.backbone and (r := self.backbone.meta()) else {})}

    def apply_status(self) -> dict[str, Any]:
        return self.reconciler.summary() if self.reconciler else self.status

    # --- placement and plan -----------------------------------------------------------

    def live(self) -> list[LiveMember]:
        """Members to place on, as this node's gossip sees them."""
        if self.state is None:
            return []
        seen = {m["name"]: (m.get("role") or "", m["addr"].rsplit(":", 1)[0])
                for m in self.members() if m.get("state") in ("alive", "suspect")}
        seen.setdefault(self.identity.name,  # this node is alive, whatever gossip says
                        (self.identity.role, self.identity.listen.rsplit(":", 1)[0]))
        return live_members(self.state, seen)

    def authority(self) -> str:
        """Where this node's share comes from: the Primary's committed placement once a
        leader has committed one (kept when the Primary is out of reach: a minority makes
        no new placement), else every node computes the same one from gossip."""
        return "primary" if self.placement_version else "latent"

    def decision(self) -> Decision:
        """Primary > Seed > Latent for this node, from what each source says now."""
        alive = [m for m in self.members() if m.get("state") == "alive"]
        rafts = [m for m in alive if (m.get("raft") or {}).get("addr")]
        bb = self.backbone
        if bb is not None and bb.primary is not None:
            v = bb.primary.read()
            primary = PrimaryView(True, bb.primary.is_leader(), bb.primary.has_quorum(),
                                  v["version"], tuple(sorted(v["members"])),
                                  v["placement_version"])
        else:
            primary = PrimaryView(bool(rafts), False, any(m["raft"].get("leader") for m in rafts),
                                  max((_int(m.get("version")) for m in rafts), default=0),
                                  self.primary_members,
                                  max((_int(m["raft"].get("pv")) for m in rafts), default=0))
        latent = LatentView(max((_int(m.get("version")) for m in alive), default=0),
                            tuple(sorted(m["name"] for m in alive)))
        return decide(primary, self.seed_view, latent, self.placement_version)

    def share(self) -> NodeShare | None:
        if self.state is None:
            return None
        if self.placement_version:
            return self.placement.get(self.identity.name)
        return place(self.state, self.live(), version=self.held_version).get(
            self.identity.name)

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
        self.placement_version, self.placement = version, shares
        atomic_write(self.node.placement_json,
                     dump_json({"version": version, "placement": placement}))
        self.events.add("placement", f"placement v{version} committed by the leader")
        if self.latent is not None:
            self.latent.refresh()
        if self.reconciler is not None and self.share() != self._last_share:
            self.reconciler.kick()

    async def fetch_placement(self, addr: str) -> None:
        """A node without a Raft replica asks a sclerotium for the committed placement."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async with s.get(f"https://{addr}{api.API}/primary", ssl=self.peer_ssl) as r:
                    if r.status != 200:
                        return
                    view = await r.json()
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as e:
            log.debug("placement from %s: %s", addr, e)
            return
        if isinstance(view, dict) and isinstance(view.get("placement"), dict):
            self.on_primary(_int(view.get("placement_version")), view["placement"])
            if isinstance(view.get("members"), dict):
                self.primary_members = tuple(sorted(view["members"]))

    async def start_backbone(self) -> None:
        if self.backbone is None:
            self.backbone = await Backbone(self).__aenter__()

    async def stop_backbone(self, purge: bool = False) -> None:
        if self.backbone is not None:
            bb, self.backbone = self.backbone, None
            await bb.stop(purge)
            if self.latent is not None:
                self.latent.refresh()

    def k3s_token_local(self) -> str | None:
        if not self.node.raft_secret.exists():
            return None
        return k3s_token(self.node.raft_secret.read_bytes())

    async def _fetch_k3s_token(self) -> None:
        """A K3s agent needs the cluster token: sclerotia derive it, others ask a live
        sclerotium once and keep it in the data dir (0600)."""
        share = self.share()
        if share is None or share.k3s_role != "agent" or self._k3s_token():
            return
        addrs = [m["addr"] for m in self.members()
                 if m.get("role") == "sclerotium" and m.get("state") == "alive"]
        token = await fetch_k3s_token(addrs, self.peer_ssl)
        if token:
            atomic_write(self.node.k3s_token, token.encode(), 0o600)

    def _k3s_token(self) -> str:
        f = self.node.k3s_token
        return self.k3s_token_local() or (f.read_text().strip() if f.exists() else "")

    def make_plan(self) -> NodePlan | None:
        share = self.share()
        self._last_share = share
        if self.state is None or share is None:
            return None
        return plan_node(self.state, self.held_version, self.identity.name, share,
                         NodeSettings(AgentParams(data_dir=str(self.node.path),
                                                  listen=self.listen), self._k3s_token()))

    def node_info(self) -> dict[str, Any]:
        return {"name": self.identity.name, "role": self.identity.role,
                "network_id": self.identity.network_id, "listen": self.listen,
                "version": self.held_version, "sha256": self.held_sha256,
                "fingerprint": self._fingerprint,
                "status": self.status, "counters": self.counters}

    def members(self) -> list[dict[str, Any]]:
        return self.latent.members() if self.latent else []

    def peer_addresses(self) -> list[str]:
        return [m["addr"] for m in self.members() if m.get("state") == "alive"]

    def convergence(self) -> dict[str, Any]:
        return {m["name"]: {"version": m.get("version"), "state": m.get("state"),
                            **(m.get("status") or {})} for m in self.members()}

    def share_info(self) -> dict[str, Any]:
        share = self.share()
        return {"node": self.identity.name, "authority": self.authority(),
                "placement_version": self.placement_version,
                "decision": asdict(self.decision()),
                "share": asdict(share) if share else None, "apply": self.apply_status()}


def load_placement(node: NodeDir) -> tuple[int, dict[str, NodeShare]]:
    """The placement this node last adopted (our own file; unreadable means none)."""
    try:
        d = json.loads(node.placement_json.read_text())
        return int(d["version"]), shares_from_dict(d["placement"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _meta_version(m: Member) -> int:
    """Meta comes from peers: anything but a non-negative int counts as no version."""
    return _int(m.meta.get("version"))


async def run_agent(data_dir: str, opts: AgentOptions, *, advertise: str | None,
                    token: str | None, name: str, log_level: str = "INFO") -> int:
    logging.basicConfig(stream=sys.stdout, level=getattr(logging, log_level.upper(), 20),
                        format="%(asctime)s %(levelname)s %(message)s")
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
        await stop.wait()
        await agent.latent.leave()
        log.info("stopping after %.0f s", time.monotonic() - t0)
    return 0
