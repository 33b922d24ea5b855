"""One Primary sclerotium as a separate process, driven over a line protocol (tests only).

    python tests/support/primary_node.py SELF_ADDR OTHERS_COMMA DATA_DIR SECRET_HEX CONTROL_PORT

Starts a PrimaryStore and serves on 127.0.0.1:CONTROL_PORT, one command per line, one
reply line each (a connection may send many commands):

    put VERSION  commits put_envelope(VERSION, sha, data) with sync=True; data and sha are
                 deterministic functions of VERSION (see `envelope`). Replies `ok true` (applied),
                 `ok false` (committed as a no-op: not newer than held) or `fail REASON`.
    register NAME  commits register(NAME, "fp-NAME", "sclerotium", []) with sync=True;
                 replies `ok` or `fail REASON`.
    read         replies one JSON object: version, sha256, data_sha256 (hash of the held
                 envelope bytes), members (sorted names), leader (bool), leader_addr, term,
                 commit_idx, last_applied, last_idx, noop_idx and ready (a leader whose own
                 term's no-op is applied, so every entry committed before its election is
                 applied here too).

Extra SyncObjConf settings may be given as JSON in the environment variable
PRIMARY_NODE_CONF (e.g. '{"logCompactionMinEntries": 40}' to make full dumps frequent).
Logs (pysyncobj warnings included) go to stderr; the test redirects them to a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socketserver
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.raft.store import PrimaryStore  # noqa: E402

PUT_TIMEOUT = 3.0


def envelope(version: int) -> tuple[str, bytes]:
    """The (sha256, data) written for a version: a pure function of it, so a test can check
    that the held bytes are exactly what was committed for the held version."""
    data = (f"envelope-{version}-".encode() * 64)[:1024]
    return hashlib.sha256(data).hexdigest(), data


class Snapshots:
    """Reads the state on Raft's own thread (an on-tick callback), between applies: the
    three attributes put_envelope assigns are then never seen half-updated."""

    def __init__(self, store: PrimaryStore) -> None:
        self.store = store
        self.pending: list[tuple[threading.Event, dict]] = []
        self.lock = threading.Lock()
        store.addOnTickCallback(self._tick)

    def _tick(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for done, out in pending:
            try:
                out.update(self._read())
            except Exception as e:  # never let a read take Raft's thread down
                out["error"] = repr(e)
            done.set()

    def _read(self) -> dict:
        store = self.store
        st = store.getStatus()
        leader = store._isLeader()
        noop = store._SyncObj__noopIDx if leader else None
        data = store.envelope
        return {
            "self": str(st["self"]), "version": store.version, "sha256": store.sha256,
            "data_sha256": hashlib.sha256(data).hexdigest() if data is not None else "",
            "members": sorted(store.members),
            "leader": leader, "leader_addr": str(st["leader"] or ""),
            "term": st["raft_term"], "commit_idx": st["commit_idx"],
            "last_applied": st["last_applied"], "last_idx": store._SyncObj__raftLog[-1][1],
            "noop_idx": noop,
            "ready": bool(leader and noop is not None and st["last_applied"] >= noop),
        }

    def read(self) -> dict:
        done, out = threading.Event(), {}
        with self.lock:
            self.pending.append((done, out))
        if not done.wait(2.0):
            raise TimeoutError("Raft thread did not tick within 2 s")
        return out


def handle(store: PrimaryStore, snaps: Snapshots, line: str) -> str:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "put":
        version = int(arg)
        sha, data = envelope(version)
        try:
            applied = store.put_envelope(version, sha, data, sync=True, timeout=PUT_TIMEOUT)
        except Exception as e:  # SyncObjException: timeout, leader change, no leader...
            return f"fail {type(e).__name__}:{e}"
        return "ok true" if applied else "ok false"
    if cmd == "register":
        try:
            store.register(arg, f"fp-{arg}", "sclerotium", [], sync=True, timeout=PUT_TIMEOUT)
        except Exception as e:
            return f"fail {type(e).__name__}:{e}"
        return "ok"
    if cmd == "read":
        try:
            out = snaps.read()
        except TimeoutError as e:
            return f"fail {e}"
        return f"fail {out['error']}" if "error" in out else json.dumps(out)
    return f"fail unknown command {cmd!r}"


def main(argv: list[str]) -> None:
    self_addr, others, data_dir, secret_hex, control_port = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = PrimaryStore(self_addr, [o for o in others.split(",") if o],
                         bytes.fromhex(secret_hex), Path(data_dir),
                         **json.loads(os.environ.get("PRIMARY_NODE_CONF") or "{}"))
    snaps = Snapshots(store)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                line = raw.decode()
                if not line.strip():
                    continue
                reply = handle(store, snaps, line)
                self.wfile.write(reply.encode() + b"\n")
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server(("127.0.0.1", int(control_port)), Handler) as srv:
        print(f"serving {self_addr} control 127.0.0.1:{control_port}", file=sys.stderr,
              flush=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        threading.Event().wait()  # until SIGKILL/SIGTERM


if __name__ == "__main__":
    main(sys.argv[1:])
