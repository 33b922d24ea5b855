"""Staged state changes on three real agents whose apply is a stand-in
(tests/support/apply_standin.py through the hidden `--apply-command`): a service's bad
image fails on its host in the first wave and stops there, every other node keeps the
previous content; with `auto_rollback` the first wave's node applies the previous content
again (the held state keeps its version: nothing old is replayed); a good image then goes
through both waves, paused and resumed by the operator on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.desired.staged import content_id
from agent.lab.cluster import Cluster
from support.agents import GOSSIP, api, post_envelope, rollout_cli, wait_for

STANDIN = Path(__file__).parent / "support" / "apply_standin.py"
YAML = """\
schema: 1
network: {{name: local}}
services:
  endomycetes:
    web: {{image: {image}, replicas: 1}}
rollout: {{waves: [1, all], healthy_seconds: {healthy}, wave_deadline_seconds: 120,
          auto_rollback: {back}}}
"""


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(3, sclerotia=1, extra_args=GOSSIP + [
        "--apply-command", f"{sys.executable} {STANDIN}"])


def push(c: Cluster, image: str, back: bool = False, healthy: int = 2) -> tuple[int, str]:
    """Sign and push a state; (its version, its content id)."""
    data = YAML.format(image=image, back=str(back).lower(), healthy=healthy).encode()
    v, env = sign_state(NetworkDir(c.network), data)
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    return v, content_id(data)


def applied(c: Cluster) -> dict[str, dict]:
    """Each node's reconcile summary as gossip shows it (content, content_bad, status)."""
    try:
        return {m["name"]: m["status"] for m in api(c, "/api/v1/members")}
    except Exception:
        return {}


def staged(c: Cluster) -> dict:
    try:
        return api(c, "/api/v1/rollout?kind=state").get("progress") or {}
    except Exception:
        return {}


def cli(c: Cluster, action: str) -> str:
    return rollout_cli(c, action, "--services")


def host_of_web(c: Cluster) -> str:
    return next(n.name for n in c.nodes
                if "web" in (api(c, "/api/v1/share", n.addr)["share"] or {})
                .get("endomycetes", ()))


def wait_staged(c: Cluster, cid: str, status: str, took: set[str]) -> dict:
    """Wait for the staged change of `cid` to reach `status`, noting every node that
    applied it or failed it on the way."""
    def look() -> dict | None:
        for name, s in applied(c).items():
            if cid in (s.get("content"), s.get("content_bad")):
                took.add(name)
        p = staged(c)
        return p if p.get("sha256") == cid and p.get("status") == status else None
    return wait_for(look, timeout=120, what=f"the staged change of {cid} {status}")


def test_a_bad_image_stops_at_the_first_wave_and_rolls_back(cluster):
    v1, good = push(cluster, "localhost/web:1")
    wait_for(lambda: all(s.get("content") == good for s in applied(cluster).values())
             and len(applied(cluster)) == 3, timeout=60, what="every node on the first state")
    host = host_of_web(cluster)

    # a broken image for web: its host fails it in wave 1, the rollout stops there
    v2, bad = push(cluster, "localhost/broken:1")
    took: set[str] = set()
    p = wait_staged(cluster, bad, "failed", took)
    assert p["order"][0] == host and p["services"] == ["web"] and p["previous"] == good
    assert p["reason"] == f"{host} failed to apply state v{v2}"
    assert took == {host}, f"{took} took the bad content; only {host} is in wave 1"
    now = applied(cluster)
    assert {n: s.get("content") for n, s in now.items()} == dict.fromkeys(now, good)
    assert now[host].get("content_bad") == bad
    out = cli(cluster, "status")
    assert "staged change (restarts web) failed" in out and f"previous content {good}" in out
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--to",
                          ",".join(cluster.addresses()), "--network", str(cluster.network)],
                         capture_output=True, text=True, check=True).stdout
    assert f"staged change of state v{v2} (restarts web): failed, wave 1; {host} failed" in out

    # the same mistake under auto_rollback: the first wave's node goes back by itself
    v3, bad2 = push(cluster, "localhost/broken:2", back=True)
    took = set()
    p = wait_staged(cluster, bad2, "rolled_back", took)
    assert p["previous"] == good and took == {host}
    hostdir = Path(next(n.data_dir for n in cluster.nodes if n.name == host))
    wait_for(lambda: applied(cluster)[host].get("status") == "ok"
             and applied(cluster)[host].get("content") == good, timeout=60,
             what=f"{host} back on the previous content")
    assert json.loads((hostdir / "plan.json").read_text())["content"] == good
    events = [e["message"] for e in api(cluster, "/api/v1/events", next(
        n.addr for n in cluster.nodes if n.name == host))]
    assert any(f"{host} applies the previous content {good}" in m and "rolled_back" in m
               for m in events), events
    # anti-rollback: every node holds v3, the state it was given; nothing older replayed
    assert {api(cluster, "/api/v1/state", n.addr)["version"] for n in cluster.nodes} == {v3}

    # a good image: wave 1 (its host), then all, paused and resumed by the operator
    v4, fixed = push(cluster, "localhost/web:2", back=True, healthy=6)
    wait_for(lambda: staged(cluster).get("sha256") == fixed, timeout=60,
             what="the staged change of the fixed image to start")
    assert "staged change (restarts web) paused" in cli(cluster, "pause")
    assert "staged change (restarts web) running" in cli(cluster, "resume")
    took = set()
    p = wait_staged(cluster, fixed, "done", took)
    assert p["order"][0] == host and took == {n.name for n in cluster.nodes}
    wait_for(lambda: all(s.get("content") == fixed for s in applied(cluster).values()),
             timeout=60, what="every node on the fixed image")
