"""Five real agent processes on loopback: enrol with tokens, converge after a push,
survive SIGKILL of one node, refuse a replayed old envelope."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import pytest

from agent.cli_node import operator_hypha
from agent.cluster import Cluster, cluster_down, cluster_up, kill_node, restart_node, wait_ready
from agent.identity import sign_state
from agent.netdir import NetworkDir

GOSSIP = ["--gossip-interval", "0.2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster") / "c"
    c = cluster_up(d, 5, sclerotia=1, extra_args=GOSSIP, progress=lambda _: None)
    yield c
    keep_logs(c)
    cluster_down(d)


def keep_logs(c: Cluster) -> None:
    """Agent logs survive teardown for post-mortems of a failed run."""
    import shutil

    out = Path("/tmp/mycelium-test-logs")
    out.mkdir(exist_ok=True)
    for n in c.nodes:
        shutil.copy(n.log, out / Path(n.log).name)


def api(c: Cluster, path: str, addr: str | None = None):
    async def go():
        async with operator_hypha(NetworkDir(c.network), c.addresses()) as h:
            return await h.get(path, addr)

    return asyncio.run(go())


def post_envelope(c: Cluster, data: bytes, addr: str):
    async def go():
        async with operator_hypha(NetworkDir(c.network), [addr]) as h:
            return await h.call("POST", "/api/v1/envelope", data)

    return asyncio.run(go())


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def states(c: Cluster, addr: str) -> dict[str, str]:
    return {m["name"]: m["state"] for m in api(c, "/api/v1/members", addr)}


def versions(c: Cluster) -> dict[str, int]:
    return {n.name: api(c, "/api/v1/state", n.addr)["version"] for n in c.nodes}


def test_all_enrolled_with_certificates_and_see_each_other(cluster: Cluster):
    for n in cluster.nodes:
        assert (Path(n.data_dir) / "node.crt").exists()
        info = api(cluster, "/api/v1/node", n.addr)
        assert info["name"] == n.name and info["role"] == n.role
    names = {n.name for n in cluster.nodes}
    for n in cluster.nodes:
        wait_for(lambda n=n: {k for k, v in states(cluster, n.addr).items() if v == "alive"}
                 == names, what=f"{n.name} to see all members alive")


def test_push_converges_everywhere_and_replay_is_refused(cluster: Cluster):
    net = NetworkDir(cluster.network)
    data = net.network_yaml.read_bytes()
    v1, env1 = sign_state(net, data)
    v2, env2 = sign_state(net, data)
    a, status, _ = post_envelope(cluster, env1, cluster.nodes[0].addr)
    assert status == 200
    a, status, _ = post_envelope(cluster, env2, cluster.nodes[2].addr)
    assert status == 200
    wait_for(lambda: set(versions(cluster).values()) == {v2}, what="all nodes at v2")
    for n in cluster.nodes:  # replay of v1 refused everywhere, state untouched
        _, status, body = post_envelope(cluster, env1, n.addr)
        assert status == 409 and "not newer" in body["error"]
    assert set(versions(cluster).values()) == {v2}


def test_sigkill_marks_dead_then_rejoins(cluster: Cluster):
    victim = cluster.nodes[3]
    held = api(cluster, "/api/v1/state", victim.addr)["version"]
    kill_node(victim)
    others = [n for n in cluster.nodes if n is not victim]
    for n in others:
        wait_for(lambda n=n: states(cluster, n.addr).get(victim.name) == "dead",
                 timeout=40, what=f"{n.name} to mark {victim.name} dead")
    restart_node(cluster, victim.name)
    wait_ready(victim)
    for n in others:
        wait_for(lambda n=n: states(cluster, n.addr).get(victim.name) == "alive",
                 timeout=40, what=f"{n.name} to see {victim.name} alive again")
    # it kept its accepted state across the kill
    assert api(cluster, "/api/v1/state", victim.addr)["version"] >= held


def test_status_command_prints_table(cluster: Cluster, capsys, monkeypatch):
    from agent.cli import main

    monkeypatch.setenv("MYCELIUM_NETWORK", str(cluster.network))
    monkeypatch.setenv("MYCELIUM_NODES", ",".join(cluster.addresses()))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert all(n.name in out for n in cluster.nodes) and "VERSION" in out
    assert main(["status", "-o", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_push_command_waits_for_convergence(cluster: Cluster, capsys, monkeypatch):
    from agent.cli import main

    monkeypatch.setenv("MYCELIUM_NETWORK", str(cluster.network))
    alive = [n.addr for n in cluster.nodes]
    # the first address is dead: a hypha fails over to the next one
    to = ",".join(["127.0.0.1:1"] + alive)
    assert main(["push", "--to", to, "--timeout", "30"]) == 0
    out, err = capsys.readouterr()
    assert "all 5 live nodes hold version" in out and "nodes at v" in err


def test_revoked_certificate_is_refused(cluster: Cluster, tmp_path):
    from agent import pki
    from agent.schema import parse_state
    from agent.serial import dump_yaml, load_yaml

    victim = cluster.nodes[4]
    fp = pki.fingerprint((Path(victim.data_dir) / "node.crt").read_bytes())
    net = NetworkDir(cluster.network)
    doc = load_yaml(net.network_yaml.read_bytes())
    doc["revoked"] = [fp]
    data = dump_yaml(doc)
    assert parse_state(data).revoked == (fp,)
    v, env = sign_state(net, data)
    assert post_envelope(cluster, env, cluster.nodes[0].addr)[1] == 200
    wait_for(lambda: all(api(cluster, "/api/v1/state", n.addr)["version"] == v
                         for n in cluster.nodes[:4]), what="others at the revoking state")
    # the victim's certificate is refused inside the TLS handshake: no HTTP answer at all
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(Path(victim.data_dir) / "ca.crt"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(Path(victim.data_dir) / "node.crt"),
                        str(Path(victim.data_dir) / "node.key"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError,
                        http.client.RemoteDisconnected)) as e:
        urllib.request.urlopen(f"https://{cluster.nodes[0].addr}/api/v1/node", context=ctx,
                               timeout=10)
    assert not isinstance(e.value, urllib.error.HTTPError)
    for n in cluster.nodes[:4]:
        wait_for(lambda n=n: states(cluster, n.addr).get(victim.name) == "dead", timeout=40,
                 what=f"{n.name} to stop trusting the revoked node")


def test_join_command_enrols_and_bad_token_is_refused(cluster: Cluster, tmp_path, capsys):
    from datetime import timedelta

    from agent.cli import main
    from agent.signed import now_utc
    from agent.tokens import create_token

    net = NetworkDir(cluster.network)
    root = net.root()
    spore = str(net.spore_json)
    token = create_token(root, net.signing_keys(root), "rhizomorph", timedelta(minutes=5))
    code = main(["join", "--data-dir", str(tmp_path / "x"), "--listen", "127.0.0.1:9",
                 "--name", "x1", "--seed-spore", spore, "--token", token])
    out, err = capsys.readouterr()
    assert code == 0 and "enrolled x1 as rhizomorph" in out, err
    assert (tmp_path / "x" / "node.crt").exists()
    expired = create_token(root, net.signing_keys(root), "rhizomorph", timedelta(minutes=1),
                           now=now_utc() - timedelta(hours=1))
    code = main(["join", "--data-dir", str(tmp_path / "y"), "--listen", "127.0.0.1:9",
                 "--name", "y1", "--seed-spore", spore, "--token", expired])
    assert code == 1 and "expired" in capsys.readouterr().err
    assert not (tmp_path / "y" / "node.crt").exists()


def test_k3s_token_comes_from_sclerotia_only_over_mutual_tls(cluster: Cluster):
    from agent.client import client_context, fetch_k3s_token
    from agent.nodedir import NodeDir

    scl = [n for n in cluster.nodes if n.role == "sclerotium"]
    # rhizomorphs the leader did not promote to dynamic sclerotia hold no Raft secret
    others = [n for n in cluster.nodes if n.role != "sclerotium"
              and asyncio.run(_status(cluster, "/api/v1/primary", n.addr)) == 404]
    assert scl and others
    token = api(cluster, "/api/v1/k3s-token", scl[0].addr)["token"]
    assert len(token) == 64
    refused = asyncio.run(_status(cluster, "/api/v1/k3s-token", others[0].addr))
    assert refused == 404  # a rhizomorph holds no Raft secret
    # what a K3s agent node does: ask with its own node certificate, sclerotium last
    node = NodeDir(Path(others[0].data_dir))
    ctx = client_context(node.crt, node.key, node.ca_crt)
    addrs = [n.addr for n in others[1:]] + [scl[0].addr]
    assert asyncio.run(fetch_k3s_token(addrs, ctx)) == token
    # a client that trusts the network CA but shows no certificate of its own gets nothing
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.check_hostname = False
    anon.load_verify_locations(cafile=str(node.ca_crt))
    assert asyncio.run(fetch_k3s_token([scl[0].addr], anon)) == ""


async def _status(c: Cluster, path: str, addr: str) -> int:
    async with operator_hypha(NetworkDir(c.network), [addr]) as h:
        _, status, _ = await h.call("GET", path)
        return status
