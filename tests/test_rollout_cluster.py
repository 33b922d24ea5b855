"""A staged rollout on five real agents (three of them sclerotia), each running from venvs
made by the test under a systemd-like supervisor: the Raft leader moves release N+1
through its waves (one node, three, all five), recorded in the Primary spore, the
operator pauses and resumes it, the leader is SIGKILLed on the way and the next one
finishes it; every node's agent version changes and its watchdog commits it (healthy).
Then a release whose agent crashes stops at the first wave, that node returns to N by
itself and no other node changes; and a release whose first wave misses its gate is
rolled back under `auto_rollback`: the node that ran it returns to N."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from agent.desired.model import Release
from agent.lab.cluster import Cluster
from agent.node.releases import ReleaseStore, pack
from agent.node.selfupdate import ReleaseRoot
from support.agents import GOSSIP, api, rollout_cli, wait_for
from support.supervise import (
    keep_log,
    member,
    push_release,
    running,
    shared_site,
    supervise_node,
)
from support.wheels import agent_wheel

POLICY = "rollout: {waves: [1, 50%, all], healthy_seconds: 3, wave_deadline_seconds: 180}\n"
# a gate no wave can pass (healthy longer than its deadline): the first wave fails at its
# deadline after its node took the release, and auto_rollback brings that node back
NO_GATE = ("rollout: {waves: [1, all], healthy_seconds: 3600, wave_deadline_seconds: 40, "
           "auto_rollback: true}\n")


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(5, sclerotia=3, extra_args=GOSSIP)


def progress(c: Cluster) -> dict:
    try:
        return api(c, "/api/v1/rollout").get("progress") or {}
    except Exception:
        return {}


def raft_leader(c: Cluster) -> str:
    """The node whose Raft replica leads, as any node's Primary view says."""
    from agent.raft.membership import raft_addr

    for n in c.nodes:
        try:
            leader = api(c, "/api/v1/primary", n.addr)["leader"]
        except Exception:
            continue
        return next(m.name for m in c.nodes if raft_addr(m.addr) == leader)
    raise AssertionError("no Raft leader")


def all_on(c: Cluster, sha: str, timeout: float) -> None:
    for n in c.nodes:
        wait_for(lambda n=n: running(c, n.name) == sha, timeout=timeout,
                 what=f"{n.name} on {sha[:12]}")


def seed_and_push(c: Cluster, version: str, artifact: tuple[Path, str],
                  policy: str = POLICY) -> str:
    """The operator seeds n1 with the artifact and pushes a state naming it."""
    path, sha = artifact
    ReleaseStore(Path(c.nodes[0].data_dir) / "releases").add(path)
    push_release(c, version, sha, policy)
    return sha


def test_waves_then_a_crashing_release_stops_at_the_first_wave(cluster, tmp_path):
    """In the default suite (CI): 158 s here at load 2.5. No step is timed: each waits
    for what it needs, with generous limits."""
    rel = {}
    for version, crash in (("0.3.0", False), ("0.3.1", False), ("0.3.2", True),
                           ("0.3.3", False)):
        agent_wheel(tmp_path / "wh" / version, version, crash=crash)
        rel[version] = pack(tmp_path / "wh" / version, tmp_path / "dist")[:2]
    deps = shared_site(tmp_path / "deps")
    base_path, base_sha = rel["0.3.0"]
    store = ReleaseStore(tmp_path / "held")
    _, manifest = store.add(base_path)
    base = ReleaseRoot(tmp_path / "base").install(Release("0.3.0", base_sha), base_path,
                                                 manifest, extra_site=(deps,))
    roots = {n.name: ReleaseRoot(tmp_path / f"opt-{n.name}") for n in cluster.nodes}
    sups = {}
    try:
        for n in cluster.nodes:  # every node runs 0.3.0 from the shared base venv
            roots[n.name].path.mkdir()
            roots[n.name].link(base)
            sups[n.name] = supervise_node(n, roots[n.name].path, deps,
                                          tmp_path / f"{n.name}.log", "--release-deadline",
                                          "60")
        all_on(cluster, base_sha, 60)
        # release 0.3.1 under a policy of two waves
        sha = seed_and_push(cluster, "0.3.1", rel["0.3.1"])
        first = wait_for(lambda: progress(cluster).get("order"), what="the rollout to start")
        # the operator pauses and resumes it (committed through any sclerotium)
        assert "rollout paused" in rollout_cli(cluster, "pause")
        assert progress(cluster)["status"] == "paused"
        assert "rollout running" in rollout_cli(cluster, "resume")
        seen_in_wave_1: set[str] = set()
        deadline = time.monotonic() + 120
        while (p := progress(cluster)).get("wave", 0) == 0 and time.monotonic() < deadline:
            on = {n.name for n in cluster.nodes if running(cluster, n.name) == sha}
            seen_in_wave_1 |= on
            assert on <= {first[0]}, f"{on} run 0.3.1 during wave 1 ({first[0]} only)"
            assert p.get("status", "running") == "running", p
        assert seen_in_wave_1 == {first[0]}
        # the Raft leader is SIGKILLed in wave 2: the next one continues from that wave
        p = progress(cluster)
        if p.get("status") == "running":
            leader = raft_leader(cluster)
            os.killpg(sups[leader].proc.pid, signal.SIGKILL)
            waves = []
            while (q := progress(cluster)).get("status") != "done" and time.monotonic() < \
                    deadline + 120:
                if q:
                    assert q["order"] == p["order"] and q["wave"] >= p["wave"], (p, q)
                    waves.append(q["wave"])
            print(f"killed the leader {leader} in wave {p['wave'] + 1}; waves seen after: "
                  f"{sorted(set(waves))}")
        wait_for(lambda: progress(cluster).get("status") == "done", timeout=180,
                 what="the rollout to finish")
        all_on(cluster, sha, 60)
        for n in cluster.nodes:  # every agent's version changed, and its watchdog committed it
            wait_for(lambda n=n: roots[n.name].read().get("running", {}).get("version")
                     == "0.3.1", timeout=60, what=f"{n.name}'s watchdog to commit 0.3.1")
            assert member(cluster, n.name)["rel"]["v"] == "0.3.1"
        # release 0.3.2 crashes at start: wave 1 fails its gate, the rollout stops
        bad = seed_and_push(cluster, "0.3.2", rel["0.3.2"])
        p = wait_for(lambda: progress(cluster) if progress(cluster).get("status") == "failed"
                     and progress(cluster).get("sha256") == bad else None, timeout=150,
                     what="the rollout of 0.3.2 to fail")
        one = p["order"][0]
        assert "rolled release 0.3.2 back" in p["reason"]
        assert roots[one].bad() == [bad]
        all_on(cluster, sha, 60)
        for n in cluster.nodes:
            if n.name != one:  # nobody else even installed it
                assert roots[n.name].venv_of(bad) is None and not roots[n.name].bad()
        print("rollout of 0.3.2:", p["status"], p["reason"])
        # release 0.3.3 runs, but its first wave cannot pass the gate: with auto_rollback
        # the rollout is rolled_back and the node that took it returns to 0.3.1 by itself
        later = seed_and_push(cluster, "0.3.3", rel["0.3.3"], NO_GATE)
        p = wait_for(lambda: progress(cluster) if progress(cluster).get("status") ==
                     "rolled_back" and progress(cluster).get("sha256") == later else None,
                     timeout=180, what="the rollout of 0.3.3 to be rolled back")
        one = p["order"][0]
        assert p["previous"] == sha and "not healthy within 40 s" in p["reason"], p
        all_on(cluster, sha, 90)
        wait_for(lambda: roots[one].read().get("running", {}).get("sha256") == sha,
                 timeout=60, what=f"{one}'s watchdog to commit its return to 0.3.1")
        took = roots[one].venv_of(later)  # it ran 0.3.3: installed, then switched from it
        assert took is not None and roots[one].read()["previous"] == str(took[0])
        assert not roots[one].bad()[1:]  # nothing new marked bad: this was no crash
        for n in cluster.nodes:
            if n.name != one:
                assert roots[n.name].venv_of(later) is None
        print("rollout of 0.3.3:", p["status"], p["reason"])
    finally:
        for name, s in sups.items():
            s.stop()
            keep_log(tmp_path / f"{name}.log", f"rollout-{name}.log")
