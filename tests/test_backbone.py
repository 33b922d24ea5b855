"""The Primary spore inside the agents: five processes on loopback, two dedicated
sclerotia and a target of three, so the leader promotes a rhizomorph; it commits the pushed
state, the member registry and the placement every node acts on, republishes the seed
spore, and promotes, re-adds and demotes as sclerotia die and come back."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import cluster_down, cluster_up, kill_node, restart_node, wait_ready
from agent.raft.membership import raft_addr
from agent.trust.spore import load_spore, new_spore, sign_spore_with_root, verify_spore
from support.agents import (
    BACKBONE_YAML,
    GOSSIP,
    api,
    keep_logs,
    leader_view,
    post_envelope,
    primary,
    wait_for,
    web_hosts,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbone") / "c"
    c = cluster_up(d, 5, sclerotia=2, extra_args=GOSSIP + ["--seed-interval", "1",
                                                            "--raft-remove-after", "3"],
                   progress=lambda _: None)
    seed = d / "published" / "spore.json"
    seed.parent.mkdir()
    data = BACKBONE_YAML.replace("SEED", str(seed)).encode()
    version, env = sign_state(NetworkDir(c.network), data)
    assert post_envelope(c, env, c.nodes[2].addr)[1] == 200  # pushed to a rhizomorph
    c.pushed = version  # type: ignore[attr-defined]
    c.seed = seed  # type: ignore[attr-defined]
    yield c
    keep_logs(c, "test_backbone")
    cluster_down(d)


def test_leader_commits_state_registry_and_promotes_to_target(cluster):
    view = wait_for(lambda: (v := leader_view(cluster)) and v["version"] == cluster.pushed
                    and len(v["raft_members"]) == 3 and v, what="Primary at target, state in")
    assert len(view["dynamic"]) == 1
    promoted = next(iter(view["dynamic"]))
    assert promoted in ("n3", "n4", "n5")
    # every member registered with the fingerprint of its own certificate
    fps = {n.name: api(cluster, "/api/v1/node", n.addr)["fingerprint"] for n in cluster.nodes}
    wait_for(lambda: {k: v["fingerprint"] for k, v in leader_view(cluster)["members"].items()}
             == fps, what="registry complete")
    # a follower's read says it may be stale
    follower = next(n for n in ("n1", "n2", promoted)
                    if raft_addr(next(x.addr for x in cluster.nodes if x.name == n))
                    != view["leader"])
    assert primary(cluster, follower)["possibly_stale"] is True


def test_a_used_token_or_taken_name_is_refused_at_every_sclerotium(cluster):
    """Token uses and enrolled names live in the Primary: what one sclerotium issued, the
    other (a dedicated sclerotium too, with its own enrolment port) refuses."""
    from datetime import timedelta

    from agent.authoring.identity import make_token
    from support.agents import enrol_at

    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    net = NetworkDir(cluster.network)
    token = make_token(net, "rhizomorph", timedelta(minutes=5))
    assert enrol_at(n1.addr, token, "w1")[0] == 200
    status, body = enrol_at(n2.addr, token, "w2")
    assert status == 403 and body["error"] == "join token already used"
    fresh = make_token(net, "rhizomorph", timedelta(minutes=5), uses=5)
    got = wait_for(lambda: (r := enrol_at(n2.addr, fresh, "w1"))[0] == 409 and r,
                   what="w1 held at n2")
    assert got[1]["error"].startswith("node name w1 is already enrolled")


def test_every_node_acts_on_the_committed_placement(cluster):
    view = wait_for(lambda: (v := leader_view(cluster)) and v["placement_version"] and v,
                    what="a committed placement")
    pv = view["placement_version"]
    hosts = web_hosts(view)
    assert len(hosts) == 2 and set(hosts) <= {"n3", "n4", "n5"}

    def all_on_it():
        shares = [api(cluster, "/api/v1/share", n.addr) for n in cluster.nodes]
        return all(s["authority"] == "primary" and s["placement_version"] >= pv
                   for s in shares) and shares
    shares = wait_for(all_on_it, what="every node on the leader's placement")
    for s in shares:
        assert ("web" in s["share"]["endomycetes"]) == (s["node"] in hosts)


def test_status_shows_raft_roles_and_each_nodes_share(cluster, capsys, monkeypatch):
    from agent.cli import main

    monkeypatch.setenv("MYCELIUM_NETWORK", str(cluster.network))
    monkeypatch.setenv("MYCELIUM_NODES", ",".join(cluster.addresses()))
    view = wait_for(lambda: leader_view(cluster), what="a leader")

    def shown() -> tuple[str, dict] | None:
        assert main(["status", "--shares"]) == 0
        table, shares = capsys.readouterr().out.split("\n\n")
        share_rows = {line.split()[0]: line.split() for line in shares.splitlines()[1:]}
        # under load a node may still act on the gossiped state for a moment
        # ("primary,state:latent") before it reads the commit: wait for the Primary's
        settled = all(share_rows.get(n, ["", ""])[1] == "primary" for n in web_hosts(view))
        return (table, share_rows) if settled else None

    table, share_rows = wait_for(shown, what="every web host acting on the Primary")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    leader = next(n.name for n in cluster.nodes if raft_addr(n.addr) == view["leader"])
    assert rows[leader][3] == "leader"
    assert sum(r[3] in ("leader", "member") for r in rows.values()) == 3
    assert set(share_rows) == {n.name for n in cluster.nodes}
    for name in web_hosts(view):
        assert "web" in share_rows[name][4]
    assert main(["status", "--shares", "-o", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["shares"]) == 5


def test_seed_spore_republished_by_the_leader(cluster):
    net = NetworkDir(cluster.network)
    wait_for(lambda: cluster.seed.exists(), what="seed spore written")

    def current():
        spore, _ = verify_spore(cluster.seed.read_bytes(), net.root(),
                                ca_pem=net.ca_crt.read_bytes())
        return spore
    view = wait_for(lambda: (v := leader_view(cluster)) and len(v["raft_members"]) == 3 and v,
                    what="three members")
    members = {a for a in view["raft_members"]}
    spore = wait_for(lambda: (s := current()).envelope and {raft_addr(a) for a in s.bootstrap}
                     == members and s, what="spore lists the sclerotia")
    assert spore.envelope["signed"]["version"] == cluster.pushed
    # signed by a node key, not the root keys; a root-only check refuses it
    with pytest.raises(Exception, match="sclerotium"):
        verify_spore(cluster.seed.read_bytes(), net.root())


def test_raw_bytes_on_the_raft_port_change_nothing(cluster):
    view = leader_view(cluster)
    host, port = raft_addr(cluster.nodes[0].addr).rsplit(":", 1)
    for junk in (b"\x00" * 64, b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.", b"x" * 100_000):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
    time.sleep(0.5)
    after = leader_view(cluster)
    assert after["version"] == view["version"]
    assert after["raft_members"] == view["raft_members"]
    assert not Path("/tmp/pwned").exists()


def test_death_promotes_and_moves_placement_then_return_demotes(cluster):
    view = wait_for(lambda: (v := leader_view(cluster)) and len(v["raft_members"]) == 3
                    and v["placement_version"] and v, what="steady Primary")
    first_dynamic = next(iter(view["dynamic"]))
    victim = next(n for n in cluster.nodes if n.name == "n2")
    kill_node(victim)
    t0 = time.monotonic()
    alive = [n.name for n in cluster.nodes if n.name != "n2"]
    # n2 is a K3s server in the placement until the leader sees it dead and re-places
    moved = wait_for(lambda: (v := leader_view(cluster, alive)) and "n2" not in
                     v["placement"]["shares"] and v, timeout=60, what="placement without n2")
    print(f"death to new committed placement: {time.monotonic() - t0:.2f} s")
    # live sclerotia fell to two: a second rhizomorph is promoted and added
    grown = wait_for(lambda: (v := leader_view(cluster, alive)) and len(v["dynamic"]) == 2
                     and len(v["raft_members"]) == 4 and v, timeout=60, what="second promotion")
    assert first_dynamic in grown["dynamic"] and moved["placement_version"] > \
        view["placement_version"]
    # n2 comes back: four live members for a target of three, so one dynamic one goes
    restart_node(cluster, "n2")
    wait_ready(victim)
    shrunk = wait_for(lambda: (v := leader_view(cluster)) and len(v["dynamic"]) == 1
                      and len(v["raft_members"]) == 3 and v, timeout=60, what="demotion")
    demoted = (set(grown["dynamic"]) - set(shrunk["dynamic"])).pop()
    node = next(n for n in cluster.nodes if n.name == demoted)
    wait_for(lambda: primary(cluster, demoted) is None, what="demoted node stops Raft")
    assert not (Path(node.data_dir) / "sclerotium" / "raft.secret").exists()
    assert raft_addr(victim.addr) in shrunk["raft_members"]
    saved = Path(victim.data_dir) / "sclerotium" / "raft-members.json"
    wait_for(lambda: json.loads(saved.read_text()) == sorted(shrunk["raft_members"]),
             what="n2 saved the membership")


def test_dead_dynamic_member_is_replaced_removed_and_stopped_on_return(cluster):
    """A promoted rhizomorph dies: another is promoted, the dead one leaves the Raft
    membership after --raft-remove-after (so the majority stays reachable), and when it
    comes back it is told to stop its Raft side."""
    view = wait_for(lambda: (v := leader_view(cluster)) and len(v["raft_members"]) == 3
                    and len(v["dynamic"]) == 1 and v, timeout=60, what="steady Primary")
    dead = next(iter(view["dynamic"]))
    victim = next(n for n in cluster.nodes if n.name == dead)
    kill_node(victim)
    alive = [n.name for n in cluster.nodes if n.name != dead]
    after = wait_for(lambda: (v := leader_view(cluster, alive)) and dead not in v["dynamic"]
                     and raft_addr(victim.addr) not in v["raft_members"]
                     and len(v["raft_members"]) == 3 and len(v["dynamic"]) == 1 and v,
                     timeout=60, what="replacement promoted and the dead member removed")
    assert next(iter(after["dynamic"])) != dead
    restart_node(cluster, dead)
    wait_ready(victim)
    wait_for(lambda: not (Path(victim.data_dir) / "sclerotium" / "raft.secret").exists()
             and primary(cluster, dead) is None, timeout=60, what="returned node stops Raft")
    final = wait_for(lambda: leader_view(cluster), what="a leader")
    assert raft_addr(victim.addr) not in final["raft_members"]


def test_without_sclerotia_a_newer_seed_spore_is_acted_on(cluster):
    """Seed > Latent: with every Raft member down, the operator publishes a newer state in
    the seed spore; the rhizomorphs left read it and accept it, keeping their placement."""
    view = wait_for(lambda: leader_view(cluster), what="a leader")
    rafts = set(view["raft_members"])
    down = [n for n in cluster.nodes if raft_addr(n.addr) in rafts]
    left = [n for n in cluster.nodes if n not in down]

    def settled() -> dict[str, int] | None:
        """Every node left holds the leader's latest placement (read while one was still
        travelling, the test once saw v4 here and v5 after the kill)."""
        lv = leader_view(cluster)
        pv = {n.name: api(cluster, "/api/v1/share", n.addr)["placement_version"]
              for n in left}
        return pv if lv and set(pv.values()) == {lv["placement_version"]} else None

    pv = wait_for(settled, what="the leader's placement on every rhizomorph")
    for n in down:
        kill_node(n)
    wait_for(lambda: all(m["state"] == "dead" for m in api(cluster, "/api/v1/members",
                                                           left[0].addr)
                         if m["name"] in {n.name for n in down}), timeout=40,
             what="Raft members seen dead")
    net = NetworkDir(cluster.network)
    data = BACKBONE_YAML.replace("SEED", str(cluster.seed)).encode()
    version, env = sign_state(net, data)
    held = load_spore(cluster.seed.read_bytes())
    root = net.root()
    spore = new_spore(held.roots, root, held.version + 1, list(held.bootstrap),
                      json.loads(env))
    keys = net.signing_keys(root)[: root.role("root").threshold]
    cluster.seed.write_bytes(sign_spore_with_root(spore, keys).to_bytes())
    wait_for(lambda: all(api(cluster, "/api/v1/state", n.addr)["version"] == version
                         for n in left), timeout=30, what="rhizomorphs take the seed's state")
    for n in left:
        # a node that pulled the state by gossip first names the seed once it re-reads it
        share = wait_for(lambda n=n: (s := api(cluster, "/api/v1/share", n.addr))
                         ["decision"]["state_source"] == "seed" and s, what="seed authority")
        assert share["authority"] == "primary" and share["placement_version"] == pv[n.name]
        assert share["decision"]["may_place"] is False
    # the first to read the seed took it from there; others may have pulled it by gossip
    events = [e["message"] for n in left for e in api(cluster, "/api/v1/events?n=200", n.addr)]
    assert any(f"accepted state v{version} from seed spore" in e for e in events)
