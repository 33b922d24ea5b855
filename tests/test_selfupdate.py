"""Install, switch and roll back: the watchdog's rules as a table, then a real agent that
updates itself into venvs made by the test and comes back from a release that crashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.desired.model import Release
from agent.errors import PeerError
from agent.lab.cluster import Cluster
from agent.node.releases import ReleaseStore, pack
from agent.node.selfupdate import STAMP, Health, ReleaseRoot, running_release, verdict
from support.agents import GOSSIP, api, wait_for
from support.supervise import (
    keep_log,
    member,
    push_release,
    running,
    shared_site,
    supervise_node,
)
from support.wheels import agent_wheel

P = {"sha256": "b" * 64, "switched_at": 100.0, "deadline": 160.0}


@pytest.mark.parametrize("pending, health, now, starts, want", [
    (None, None, 0, 0, "none"),
    (P, None, 120, 0, "wait"),
    (P, None, 160, 0, "rollback"),  # deadline passed without a health file
    (P, Health("b" * 64, 130, True, True, "ok"), 140, 0, "healthy"),
    (P, Health("b" * 64, 130, True, True, "off"), 200, 0, "healthy"),  # late look, still ok
    (P, Health("b" * 64, 90, True, True, "ok"), 140, 0, "wait"),  # written before the switch
    (P, Health("a" * 64, 130, True, True, "ok"), 140, 0, "wait"),  # the old release wrote it
    (P, Health("b" * 64, 130, True, False, "ok"), 140, 0, "wait"),  # not gossiping
    (P, Health("b" * 64, 130, True, True, "failed"), 170, 0, "rollback"),
    (P, None, 120, 3, "wait"),  # starts counted but no limit given
])
def test_verdicts(pending, health, now, starts, want):
    assert verdict(pending, health, now, starts) == want


def test_crash_loop_rolls_back_before_the_deadline():
    assert verdict(P, None, 120, 3, max_starts=3) == "rollback"
    assert verdict(P, None, 120, 2, max_starts=3) == "wait"


def fake_venv(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    return path


def test_switch_commit_and_rollback_on_disk(tmp_path: Path):
    root = ReleaseRoot(tmp_path / "opt")
    fake_venv(root.path / "venv")
    root.ensure_current()
    assert root.target() == root.path / "venv"
    new = fake_venv(tmp_path / "opt/releases/2-bbbbbbbbbbbb/venv")
    root.switch(Release("2", "b" * 64), new, deadline=60, now=1000)
    assert root.target() == new and root.read()["pending"]["previous"] == str(root.path / "venv")
    health = tmp_path / "health.json"
    assert root.watchdog(health, now=1010) == "wait"
    health.write_bytes(Health("b" * 64, 1020, True, True, "ok").to_bytes())
    assert root.watchdog(health, now=1021) == "healthy"
    d = root.read()
    assert "pending" not in d and d["running"]["version"] == "2" and root.target() == new
    # the next one never becomes healthy: back to the one before it, marked bad
    third = fake_venv(tmp_path / "opt/releases/3-cccccccccccc/venv")
    root.switch(Release("3", "c" * 64), third, deadline=60, now=2000)
    assert [root.watchdog(health, now=2000 + i, count_start=True, max_starts=3)
            for i in range(3)] == ["wait", "wait", "rollback"]
    assert root.target() == new and root.bad() == ["c" * 64]
    assert root.read()["rolled_back"]["to"] == str(new)
    assert not list(root.path.glob(".current.*"))  # no temp link left behind


def test_a_commit_prunes_all_but_current_and_previous(tmp_path: Path):
    """Venvs (127 MB each) and artifacts of older releases go at the watchdog's commit;
    the image's own venv, the previous release and an artifact fetched since stay."""
    root = ReleaseRoot(tmp_path / "opt")
    fake_venv(root.path / "venv")
    root.ensure_current()
    store = tmp_path / "data" / "releases"
    store.mkdir(parents=True)
    health = tmp_path / "data" / "health.json"

    def release(v: str, fetched: float) -> Path:
        venv = fake_venv(root.venv_for(Release(v, v * 64)))
        (venv / STAMP).write_text(json.dumps({"sha256": v * 64, "version": v}))
        artifact(v, fetched)
        return venv

    def artifact(v: str, fetched: float) -> None:
        (store / f"{v * 64}.tar").write_bytes(b"x")
        os.utime(store / f"{v * 64}.tar", (fetched, fetched))

    def take(v: str, at: float, healthy: bool = True) -> str:
        root.switch(Release(v, v * 64), root.venv_for(Release(v, v * 64)), 60, now=at)
        if healthy:
            health.write_bytes(Health(v * 64, at + 1, True, True, "ok").to_bytes())
        return root.watchdog(health, now=at + (2 if healthy else 100), artifacts=store)

    def venvs() -> list[str]:
        return sorted(p.parent.name[0] for p in root.path.glob("releases/*/venv"))

    def held() -> list[str]:
        return sorted(p.name[0] for p in store.glob("*.tar"))

    for i, v in enumerate("234"):
        release(v, fetched=1000 * i + 500)
        assert take(v, at=1000 * (i + 1)) == "healthy"
    assert venvs() == ["3", "4"] and held() == ["3", "4"]
    assert (root.path / "venv").is_dir()  # the image's own, never pruned
    artifact("1", fetched=1)  # an old copy put here by hand
    # a switch that is rolled back is no commit: it prunes nothing
    release("6", fetched=5500)
    assert take("6", at=6000, healthy=False) == "rollback"
    assert venvs() == ["3", "4", "6"] and held() == ["1", "3", "4", "6"]
    # the next commit keeps it (current) and 4 (previous), and 5, fetched since its switch
    release("7", fetched=8500)
    artifact("5", fetched=9500)
    assert take("7", at=9000) == "healthy"
    assert venvs() == ["4", "7"] and held() == ["4", "5", "7"]


def test_running_release_reads_the_venv_stamp(tmp_path: Path):
    (tmp_path / STAMP).write_text(json.dumps({"sha256": "d" * 64, "version": "4"}))
    assert running_release(str(tmp_path)).running == "d" * 64
    assert running_release(str(tmp_path / "none")).running == ""


# --- a real agent updating itself ------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(2, sclerotia=1, extra_args=GOSSIP)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("releases")
    out = {}
    for version, crash in (("0.1.1", False), ("0.1.2", False), ("0.1.3", True)):
        agent_wheel(d / version, version, crash=crash)
        path, sha, _ = pack(d / version, d / "dist")
        out[version] = (path, sha)
    return out


def events(c: Cluster, addr: str) -> list[dict]:
    try:
        return api(c, "/api/v1/events?n=200", addr)
    except PeerError:  # restarting
        return []


@pytest.mark.slow
def test_agent_updates_itself_and_returns_from_a_crashing_release(cluster, releases, tmp_path):
    """python -m pytest -m slow tests/test_selfupdate.py (about 60-90 s)."""
    n1, n2 = cluster.nodes
    root = ReleaseRoot(tmp_path / "opt")
    deps = shared_site(tmp_path / "deps")
    first_path, first_sha = releases["0.1.1"]
    store = ReleaseStore(tmp_path / "held")
    _, manifest = store.add(first_path)
    first = root.install(Release("0.1.1", first_sha), first_path, manifest, extra_site=(deps,))
    root.link(first)  # the agent the node was built with
    sup = supervise_node(n2, root.path, deps, tmp_path / "n2.log", "--release-deadline", "60")
    try:
        wait_for(lambda: running(cluster, "n2") == first_sha, timeout=60,
                 what="n2 running 0.1.1")
        # release 0.1.2, seeded on n1: n2 fetches, installs, switches, restarts, commits
        path, sha = releases["0.1.2"]
        ReleaseStore(Path(n1.data_dir) / "releases").add(path)
        push_release(cluster, "0.1.2", sha)
        wait_for(lambda: running(cluster, "n2") == sha, timeout=120, what="n2 running 0.1.2")
        assert member(cluster, "n2")["rel"]["v"] == "0.1.2"
        wait_for(lambda: root.read().get("running", {}).get("sha256") == sha, timeout=30,
                 what="the watchdog to commit 0.1.2")
        second = root.venv_for(Release("0.1.2", sha))
        assert root.target() == second and root.read()["previous"] == str(first)
        assert (first / STAMP).exists() and 75 in sup.exits
        # release 0.1.3 crashes at start: after three starts the watchdog switches back
        path, bad = releases["0.1.3"]
        ReleaseStore(Path(n1.data_dir) / "releases").add(path)
        push_release(cluster, "0.1.3", bad)
        wait_for(lambda: root.bad() == [bad], timeout=120, what="0.1.3 rolled back")
        wait_for(lambda: "rollback" in sup.verdicts, timeout=10, what="the rollback verdict")
        assert root.target() == second
        wait_for(lambda: running(cluster, "n2") == sha, timeout=60, what="n2 back on 0.1.2")
        # it stays there: the state still names 0.1.3, which this node will not retry
        wait_for(lambda: any("0.1.3 was rolled back on this node" in e["message"]
                             for e in events(cluster, n2.addr)),
                 timeout=30, what="n2 to say it keeps 0.1.2")
        assert root.target() == second
        print("agent exits:", sup.exits, "watchdog verdicts:", sup.verdicts)
    finally:
        sup.stop()
        keep_log(tmp_path / "n2.log", "selfupdate-n2.log")
