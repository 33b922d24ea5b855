"""Every knob of a running node in one place (memberlist's `DefaultLANConfig`).

Why one module: the numbers that trade detection speed against false alarms, or network
load against convergence time, interact; reading them side by side is how they are judged.
Values here are defaults for a LAN of up to a few hundred nodes; network.yaml
(spores.latent) and the agent's flags override some of them per network or per node.
Protocol limits that are part of the wire format (message caps) stay with the codec.
"""

from __future__ import annotations

# --- the Latent spore (SWIM gossip, agent/gossip/) -------------------------------------
GOSSIP_INTERVAL = 0.2  # seconds per gossip round when neither flag nor network.yaml says
GOSSIP_FANOUT = 3  # peers each round talks to (fanout - 1 gossip messages plus the probe)
INDIRECT_PROBES = 3  # helpers asked to ping a target that missed our direct ping
# rounds between anti-entropy digest exchanges with one random peer, up to 32 nodes; one
# more multiple per doubling beyond (agent/gossip/swim.py sync_period)
SYNC_EVERY = 10
RETRANSMIT_MULT = 4  # a change is piggybacked RETRANSMIT_MULT * log10(n) times
MAX_PIGGYBACK = 32  # changes carried by one message at most
SUSPICION_MULT = 5.0  # a suspect has SUSPICION_MULT * log10(n) rounds to refute ...
SUSPICION_FLOOR = 3.0  # ... but never under this many seconds (lossy links, and a node
# descheduled for a second at a time, as a TCG guest or an overloaded Pi is, must get
# two chances to refute; memberlist's LAN default gives 4-5 s)
MAX_LHM = 8  # Lifeguard local health ceiling: timeouts stretch by at most 1 + MAX_LHM
PROBE_TIMEOUT_FLOOR = 0.5  # seconds a direct probe waits at least (2 rounds otherwise)
REQUEST_TIMEOUT_FLOOR = 1.0  # seconds any gossip request waits at least (5 rounds else)
RECONNECT_CHANCE = 0.2  # per round: chance to sync with a dead member (healed partitions)
SEEDS_KEPT = 16  # join addresses retried while no member is alive
ANNOUNCE_TO = 8  # live peers told of a newly accepted state at once
FORGED_REPORT_EVERY = 60.0  # seconds between events for forged records / refused senders

# --- the node daemon (agent/node/) -----------------------------------------------------
SEED_INTERVAL = 30.0  # seconds between seed spore reads while no sclerotium is in reach
DRIFT_INTERVAL = 300.0  # seconds between re-applies of an unchanged plan (drift repair)
RECONCILE_BACKOFF_MIN = 5.0  # seconds before retrying a failed apply ...
RECONCILE_BACKOFF_MAX = 300.0  # ... doubling up to this
APPLY_TIMEOUT = 1800.0  # seconds one apply subprocess may run before it is killed
HANDSHAKES_KEPT = 4096  # peer certificate fingerprints remembered from TLS handshakes
STORAGE_RETRY = 5.0  # seconds before a gossip pull the disk refused is tried again
VM_SYNC_INTERVAL = 2.0  # s between checks that the VMs running match this node's share

# --- releases and self-update (agent/node/updater.py, agent/node/selfupdate.py) ---------
RELEASE_CHECK = 2.0  # seconds between looks at the release the state names (new states kick)
RELEASE_RETRY_MAX = 60.0  # seconds at most between fetch attempts after failures (doubling)
INSTALL_RETRY_MIN = 30.0  # seconds before a failed release install (pip, full disk) is retried...
INSTALL_RETRY_MAX = 1800.0  # ...doubling up to this
RELEASE_FETCH_TIMEOUT = 300.0  # seconds for one artifact download from one source
RELEASE_HEALTH_EVERY = 2.0  # seconds between writes of DATA/health.json (the watchdog reads it)
RELEASE_SERVING = 2  # artifact downloads a node serves at once; more get 503 and go elsewhere
RELEASE_DEADLINE = 120.0  # seconds a new release has to report healthy before it is rolled back

# --- the Primary spore inside the agent (agent/node/backbone.py, agent/raft/) ----------
BACKBONE_INTERVAL = 0.2  # seconds between backbone ticks (state sync, leader duties)
PROPOSE_EVERY = 2.0  # seconds between proposals of the same version to the Primary
PUBLISH_EVERY = 5.0  # seconds between seed publish attempts that failed
CHANGE_RETRY = 1.0  # seconds a failed membership change waits before the next decision
# pysyncobj's timers. Measured on loopback (tests/bench/bench_raft.py, 3 sclerotia): the
# old 5 ms tick and 10 ms heartbeats cost an idle 2-node network ~10 % of a core per agent
# (a TCG guest or a Pi many times that), and 0.15-0.3 s elections left a busy node little
# room before it was deposed; now 4 % (most of it gossip), failover p50 0.85 s (was 0.2),
# and commits are faster (p50 12.9 -> 2.4 ms): without batching a command wakes the Raft
# thread at once instead of waiting for the next tick or heartbeat.
RAFT_TICK = 0.05  # s the Raft thread sleeps when nothing arrives
RAFT_HEARTBEAT = 0.1  # s between a leader's heartbeats
RAFT_ELECTION = (0.6, 1.2)  # s of silence before a follower stands: 6-12 heartbeats
RAFT_RECONNECT = 0.5  # s between reconnection attempts to a Raft peer


def raft_pace(gossip_interval: float) -> tuple[float, float, float]:
    """(heartbeat, election low, election high) for a network whose gossip round is
    `gossip_interval` s. A network that slows its gossip (network.yaml `interval_ms`) does
    so because its nodes are slow or far apart, and Raft must give them the same room:
    elections wait at least 3-6 rounds. With the 200 ms default this is RAFT_ELECTION.
    Two TCG guests at 1 s rounds held 89 elections in 15 minutes with 0.6-1.2 s."""
    low = max(RAFT_ELECTION[0], round(3 * gossip_interval, 3))
    high = max(RAFT_ELECTION[1], round(6 * gossip_interval, 3))
    return max(RAFT_HEARTBEAT, round(low / 6, 3)), low, high
# A dead promoted member leaves the Raft membership after this many seconds: long enough
# for a reboot or a brief partition, short against hardware replacement.
RAFT_REMOVE_AFTER = 60.0

# --- listening ports (agent/serve.py, agent/raft/frames.py) ---------------------------
# Connections a port holds at once, counted from accept. The API port carries the CLI, the
# TUI and every peer's gossip (aiohttp pools a few connections per peer); the enrolment
# and seed ports see one short request per joiner or publish.
API_MAX_CONNECTIONS = 256
ENROL_MAX_CONNECTIONS = 64
SEED_MAX_CONNECTIONS = 64
LOCAL_MAX_CONNECTIONS = 8  # the node console's unix socket: one dashboard per console
UNIX_PATH_MAX = 107  # bytes in a unix socket path (sun_path, less its NUL)
HANDSHAKE_DEADLINE = 10.0  # s from accept to a finished TLS handshake
HEADER_DEADLINE = 10.0  # s from the handshake (or the last response) to complete headers
BODY_DEADLINE = 30.0  # s to read a whole body (1 MiB over a slow link)
SMALL_BODY_BYTES = 64 * 1024  # JSON control requests (promote, ...)
COLLECT_AFTER = 5.0  # s after a failed handshake, one garbage collection frees its buffer
# The Raft port (pysyncobj, agent/raft/store.py): a frame's declared length is checked
# before anything is buffered. Frames are compressed, encrypted pickles: an entry carries
# at most one envelope (1 MiB, Fernet adds a third), so 8 MiB leaves room. Until the
# first frame has proved the Raft password, a connection may send only a small one, at
# most RAFT_MAX_PENDING such connections wait at once, each for RAFT_PENDING_DEADLINE.
RAFT_MAX_FRAME = 8 << 20
RAFT_FIRST_FRAME = 64 * 1024
RAFT_MAX_PENDING = 32
RAFT_PENDING_DEADLINE = 10.0

# --- file modes in the data dir --------------------------------------------------------
PRIVATE_FILE = 0o600  # keys, secrets, tokens, plans that may hold a token
PRIVATE_DIR = 0o700  # the data dir and its sclerotium/ and raft/ folders
PUBLIC_FILE = 0o644  # everything else (certificates, states, status)
