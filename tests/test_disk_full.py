"""A node whose data dir fills up (issue 18 item 7, issue 12 "Disk full").

Two real agents on loopback; n1's data dir is a small tmpfs mounted for the test (root
only: skipped with the reason otherwise). With it full, a push to n1 is refused 507 with one
line naming the node and the cause, n1 puts one event however often gossip makes it retry,
its log stays short, `mycelium push` names the node and the cause instead of timing out,
and nothing it held is torn. Once space returns it catches up and accepts the next push.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.cli.push import push_state
from agent.errors import PeerError, StorageError
from agent.lab.cluster import Cluster, cluster_down, cluster_up, kill_node, pid_alive
from support.agents import GOSSIP, api, keep_logs, post_envelope, versions, wait_for

YAML = b"schema: 1\nnetwork: {name: local}\n"
FILLER = "filler.bin"


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def _fill(directory: Path) -> None:
    """Write until the filesystem refuses: not one block is left."""
    fd = os.open(directory / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("diskfull") / "c"
    mnt = d / "nodes" / "n1"
    _mount_tmpfs(mnt, "4m")
    c = None
    try:
        c = cluster_up(d, 2, sclerotia=1, extra_args=GOSSIP, progress=lambda _: None)
        yield c
    finally:
        if c is not None:
            keep_logs(c, "test_disk_full")
            for n in c.nodes:  # stop the agents before the mount goes
                kill_node(n)
                deadline = time.monotonic() + 5
                while pid_alive(n.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        subprocess.run(["umount", str(mnt)], check=False)
        if c is not None:
            cluster_down(d)


def _storage_lines(log: str, since: int) -> list[str]:
    text = Path(log).read_text(errors="replace")[since:]
    return [ln for ln in text.splitlines()
            if "no space left" in ln.lower() or "errno 28" in ln.lower()]


def test_full_data_dir_refuses_clearly_and_recovers(full: Cluster) -> None:
    c = full
    n1, n2 = c.nodes
    net = NetworkDir(c.network)
    data = Path(n1.data_dir)
    v_ok, env = sign_state(net, YAML)
    assert post_envelope(c, env, n1.addr)[1] == 200
    wait_for(lambda: set(versions(c).values()) == {v_ok}, what="both nodes at the first state")
    held = (data / "state" / "accepted-envelope.json").read_bytes()
    log_mark = len(Path(n1.log).read_text(errors="replace"))

    _fill(data)
    # a state that only n2 stores: n1 learns of it by gossip and retries the pull
    v_gossip, env = sign_state(net, YAML)
    assert post_envelope(c, env, n2.addr)[1] == 200
    time.sleep(4)  # ~20 gossip rounds of retries

    v_push, env = sign_state(net, YAML)
    addr, status, body = post_envelope(c, env, n1.addr)
    print("direct push:", status, body)
    assert status == 507, (status, body)
    assert body["error"] == (f"node n1 cannot store state v{v_push}: no space left on device "
                             f"in {data / 'state'} (free some space)")

    # the CLI names the node and the cause: pushed to n1 directly, and waiting on n1
    (net.path / "network.yaml").write_bytes(YAML)
    with pytest.raises(StorageError, match=r"node n1 cannot store state v\d+: no space left"):
        push_state(str(c.network), None, n1.addr, timeout=5)
    with pytest.raises(PeerError, match=r"n1 \(v\d+\); node n1 cannot .*: no space left"):
        push_state(str(c.network), None, n2.addr, timeout=3)

    events = api(c, "/api/v1/events?n=200", n1.addr)
    storage = [e for e in events if "no space left" in e["message"]]
    print("storage events:", storage)
    assert len(storage) == 1, storage
    lines = _storage_lines(n1.log, log_mark)
    print(f"{len(lines)} log lines about the full disk:", *lines[:5], sep="\n  ")
    assert 1 <= len(lines) <= 6, lines
    assert "no space left on device" in api(c, "/api/v1/node", n1.addr)["problem"]

    # nothing torn: the last good state is still what n1 holds, on disk and in memory
    assert (data / "state" / "accepted-envelope.json").read_bytes() == held
    assert (data / "state" / "accepted-version").read_text() == f"{v_ok}\n"
    assert not [p.name for p in (data / "state").iterdir() if p.name.endswith(".tmp")]
    assert api(c, "/api/v1/state", n1.addr)["version"] == v_ok

    (data / FILLER).unlink()  # space returns: n1 catches up by gossip, then takes a push
    latest = versions(c)["n2"]
    wait_for(lambda: versions(c)["n1"] == latest, what="n1 catching up after space returned")
    v_next, env = sign_state(net, YAML)
    assert post_envelope(c, env, n1.addr)[1] == 200
    wait_for(lambda: set(versions(c).values()) == {v_next}, what="both nodes at the next push")
    assert api(c, "/api/v1/node", n1.addr)["problem"] == ""
    # the Raft side (n1 is the only sclerotium) took the new state into its log
    wait_for(lambda: api(c, "/api/v1/primary", n1.addr)["version"] == v_next,
             what="the Primary at the next push")


# --- the pieces, without a tmpfs ----------------------------------------------------------

def test_atomic_write_refused_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    from agent.errors import StorageError
    from agent.statefile import VersionStore, atomic_write

    store = VersionStore(tmp_path / "state")
    store.record(3, b"old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError) as e:
        store.record(4, b"new")
    assert str(e.value) == (f"no space left on device in {tmp_path / 'state'} "
                            "(free some space)")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (store.version(), store.envelope()) == (3, b"old")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "accepted-envelope.json", "accepted-version"]  # no temp file left behind
    with pytest.raises(StorageError, match="no such file or directory in"):
        atomic_write(tmp_path / "missing" / "x", b"")


def test_a_problem_is_one_event_until_solved():
    from agent.node.events import EventLog

    ev = EventLog()
    for v in range(5):
        ev.problem("storage", f"cannot store state v{v}")
    assert [e["message"] for e in ev.recent()] == ["cannot store state v0"]
    assert ev.problems == {"storage": "cannot store state v4"}
    ev.solved("storage")
    ev.solved("storage")
    ev.problem("storage", "cannot store state v9")
    assert [e["message"] for e in ev.recent()] == ["cannot store state v0", "resolved",
                                                   "cannot store state v9"]


def test_repeat_filter_shows_one_line_per_message_per_window():
    import logging

    from agent.node.events import RepeatFilter

    now = [0.0]
    f = RepeatFilter(window=60, clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("mycelium", logging.ERROR, __file__, 1, msg, None, None)

    shown = []
    for t in range(0, 130):  # one a second for two minutes, and another message once
        now[0] = float(t)
        for r in (rec("disk full"),) + ((rec("other"),) if t == 5 else ()):
            if f.filter(r):
                shown.append((t, r.getMessage()))
    assert shown == [(0, "disk full"), (5, "other"),
                     (60, "disk full (and 59 more like it held back)"),
                     (120, "disk full (and 59 more like it held back)")]
