"""The README's main job, as a newcomer types it: `cluster up --nodes 3`, `deploy --image
nginx --replicas 3 --push`, then `status --shares` shows nginx on every node, placed by the
Primary (p1 and up). The nodes joined with tokens and are not in `nodes:`; no K3s artifact is
configured, so they run podman and say so. Asking for more than fits says why in one line,
in `push` and in `status`. Every step is a `mycelium` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.agents import keep_logs, wait_for


def myc(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, text=True,
                       capture_output=True, timeout=120)
    print(f"mycelium {' '.join(args)}: exit {r.returncode} after {time.monotonic() - t0:.1f} s")
    if check and r.returncode != 0:
        raise AssertionError(f"mycelium {' '.join(args)} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from agent.lab.cluster import Cluster

    d = tmp_path_factory.mktemp("mainjob") / "demo"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    myc(env, "cluster", "up", "--nodes", "3", "--dir", str(d))
    for line in (d / "env").read_text().splitlines():  # what `. demo/env` would export
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    yield d, env
    keep_logs(Cluster.load(d), "test_main_job")
    myc(env, "cluster", "down", "--dir", str(d), check=False)


def share_rows(env: dict[str, str]) -> dict[str, list[str]]:
    out = myc(env, "status", "--shares").stdout
    print(out)
    table = out.split("\n\n")[1]
    return {line.split()[0]: line.split() for line in table.splitlines()[1:]}


def test_deploy_push_places_nginx_on_all_three_joined_nodes(demo):
    d, env = demo
    pushed = myc(env, "deploy", "--image", "nginx", "--replicas", "3", "--push")
    assert "all 3 live nodes hold version 1" in pushed.stdout
    assert "placed:" not in pushed.stdout  # nothing left unplaced

    def placed():
        rows = share_rows(env)
        ok = len(rows) == 3 and all(r[4] == "nginx" and int(r[2][1:]) >= 1
                                    and r[1] == "primary" for r in rows.values())
        return ok and rows
    rows = wait_for(placed, timeout=60, what="nginx on n1, n2, n3 by the Primary's placement")
    for r in rows.values():
        assert " ".join(r[7:]) == "podman (no components.k3s)"
    # a joined node (not in network.yaml's `nodes:`) has a plan; with a data dir `plan`
    # also dry-runs it on @local, which may fail here (no wheels): the plan is what counts
    plan = myc(env, "plan", "--data-dir", str(d / "nodes" / "n1"), check=False).stdout
    assert "node n1 (sclerotium), state v1" in plan
    assert "runtime:    podman (no components.k3s)" in plan and "services:   nginx" in plan


def test_more_replicas_than_nodes_is_said_in_push_and_status(demo):
    _, env = demo
    line = "web: 3 of 5 replicas placed: only n1, n2, n3 can run it, one per node"
    pushed = myc(env, "deploy", "--image", "web", "--replicas", "5", "--push")
    assert line in pushed.stdout.splitlines()
    status = myc(env, "status").stdout
    assert status.rstrip().splitlines()[-1] == line
    wait_for(lambda: any(e["kind"] == "placement" and e["message"] == line
                         for a in env["MYCELIUM_NODES"].split(",") for e in events(env, a)),
             what="the Raft leader's placement event naming the shortfall")


def events(env: dict[str, str], addr: str) -> list[dict]:
    import asyncio

    from agent.authoring.netdir import NetworkDir
    from agent.authoring.reach import operator_hypha

    async def get() -> list[dict]:
        async with operator_hypha(NetworkDir(Path(env["MYCELIUM_NETWORK"])), [addr]) as h:
            return await h.get("/api/v1/events?n=200")
    return asyncio.run(get())


def test_authority_names_the_placement_source_and_a_different_state_source():
    from agent.views import authority_cell

    def share(pv: int, source: str) -> dict:
        return {"placement_version": pv, "decision": {"state_source": source}}
    assert authority_cell(share(1, "primary")) == "primary"
    assert authority_cell(share(0, "primary")) == "latent,state:primary"  # none committed yet
    assert authority_cell(share(3, "seed")) == "primary,state:seed"  # minority keeps p3
    assert authority_cell(share(0, "latent")) == "latent"
    assert authority_cell(share(0, "none")) == "latent"
