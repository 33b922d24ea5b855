"""Five real agent processes on loopback: enrol with tokens, converge after a push,
survive SIGKILL of one node, refuse a replayed old envelope."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import Cluster, kill_node, restart_node, wait_ready
from support.agents import (
    GOSSIP,
    api,
    enrol_at,
    post_envelope,
    states,
    status,
    versions,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(5, sclerotia=1, extra_args=GOSSIP)


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
    from agent.desired.schema import parse_state
    from agent.trust import pki
    from agent.trust.encoding import dump_yaml, load_yaml

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
    from agent.trust.signed import now_utc
    from agent.trust.tokens import create_token

    net = NetworkDir(cluster.network)
    root = net.root()
    spore = str(net.spore_json)
    token = create_token(root, net.signing_keys(root), "rhizomorph", timedelta(minutes=5))
    code = main(["join", "--data-dir", str(tmp_path / "x"), "--listen", "127.0.0.1:9",
                 "--name", "x1", "--seed-spore", spore, "--token", token])
    out, err = capsys.readouterr()
    assert code == 0 and "enrolled x1 as rhizomorph" in out, err
    assert (tmp_path / "x" / "node.crt").exists()
    # unbound, but single-use: a second node cannot enrol with it
    code = main(["join", "--data-dir", str(tmp_path / "x2"), "--listen", "127.0.0.1:9",
                 "--name", "x2", "--seed-spore", spore, "--token", token])
    assert code == 1 and "join token already used" in capsys.readouterr().err
    assert not (tmp_path / "x2" / "node.crt").exists()
    expired = create_token(root, net.signing_keys(root), "rhizomorph", timedelta(minutes=1),
                           now=now_utc() - timedelta(hours=1))
    code = main(["join", "--data-dir", str(tmp_path / "y"), "--listen", "127.0.0.1:9",
                 "--name", "y1", "--seed-spore", spore, "--token", expired])
    assert code == 1 and "expired" in capsys.readouterr().err
    assert not (tmp_path / "y" / "node.crt").exists()


def test_k3s_token_comes_from_sclerotia_only_over_mutual_tls(cluster: Cluster):
    from agent.client import fetch_k3s_token
    from agent.node.datadir import NodeDir
    from agent.tls import client_context

    scl = [n for n in cluster.nodes if n.role == "sclerotium"]
    # rhizomorphs the leader did not promote to dynamic sclerotia hold no Raft secret
    others = [n for n in cluster.nodes if n.role != "sclerotium"
              and status(cluster, "/api/v1/primary", n.addr) == 404]
    assert scl and others
    token = api(cluster, "/api/v1/k3s-token", scl[0].addr)["token"]
    assert len(token) == 64
    refused = status(cluster, "/api/v1/k3s-token", others[0].addr)
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


def test_token_uses_and_taken_names_at_the_enrolment_server(cluster: Cluster):
    from datetime import timedelta

    from agent.authoring.identity import make_token

    net = NetworkDir(cluster.network)
    n1 = cluster.nodes[0]
    token = make_token(net, "rhizomorph", timedelta(minutes=5), uses=2)
    assert enrol_at(n1.addr, token, "u1")[0] == 200
    assert enrol_at(n1.addr, token, "u2")[0] == 200
    status, body = enrol_at(n1.addr, token, "u3")
    assert status == 403 and body["error"] == "join token already used"
    # a second node asking for a name the Primary registry holds
    fp = api(cluster, "/api/v1/node", n1.addr)["fingerprint"]
    wait_for(lambda: "n1" in api(cluster, "/api/v1/primary", n1.addr)["members"],
             what="n1 in the Primary registry")
    status, body = enrol_at(n1.addr, make_token(net, "rhizomorph", timedelta(minutes=5)),
                            "n1")
    assert status == 409 and "cert" not in body
    assert body["error"].startswith(f"node name n1 is already enrolled (fingerprint {fp[:16]}")
    for bad in ("../../evil", "a;touch x;b"):
        status, body = enrol_at(n1.addr, make_token(net, "rhizomorph", timedelta(minutes=5)),
                                bad)
        assert status == 400 and "not a DNS label" in body["error"] and "cert" not in body


def test_join_tokens_never_on_agent_command_lines(cluster: Cluster):
    """What `ps` shows every user of the machine: no agent's argv holds its token, and the
    token file is gone once the node holds a certificate."""
    for n in cluster.nodes:
        argv = Path(f"/proc/{n.pid}/cmdline").read_bytes().split(b"\0")
        assert argv and not any(b"myc1." in a for a in argv), n.name
        assert not any(a.startswith("myc1.") for a in n.argv), n.name
        assert not list(Path(n.data_dir).glob("*token*")), n.name


def test_promotion_needs_a_node_certificate_and_the_real_raft_secret(cluster: Cluster):
    """Issue 18 item 2: the operator's client certificate cannot promote anyone, and a node
    certificate with a made-up secret cannot start a Raft side of its own on a rhizomorph."""
    from agent.client import PeerClient
    from agent.node.datadir import NodeDir
    from agent.tls import client_context

    target = next(n for n in cluster.nodes if n.role != "sclerotium"
                  and status(cluster, "/api/v1/primary", n.addr) == 404)
    assert NodeDir(Path(target.data_dir)).read_raft_check()  # handed over at enrolment
    net = NetworkDir(cluster.network)
    other = NodeDir(Path(next(n for n in cluster.nodes if n is not target).data_dir))

    async def post(ctx, body, what="promote"):
        async with PeerClient(ctx) as peers:
            r = await peers.request("POST", f"https://{target.addr}/api/v1/primary/{what}",
                                    json_body=body)
            return r.status, r.body

    as_operator = client_context(net.operator_crt, net.operator_key, net.ca_crt)
    as_node = client_context(other.crt, other.key, other.ca_crt)
    forged = {"secret": "ab" * 32}
    code, body = asyncio.run(post(as_operator, forged))
    assert code == 403 and b"only a node certificate" in body
    code, body = asyncio.run(post(as_node, forged))
    assert code == 403 and b"does not verify" in body
    code, _ = asyncio.run(post(as_operator, {"proof": "x"}, "demote"))
    assert code == 403
    assert status(cluster, "/api/v1/primary", target.addr) == 404  # no Raft side started
    events = api(cluster, "/api/v1/events?n=200", target.addr)
    assert any(e["kind"] == "refused" and "does not verify" in e["message"] for e in events)
