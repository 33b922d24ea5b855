"""Membership change under a partition (issue 12 §3): never two leaders acting in one term.

Five nodes, one network namespace each: two dedicated sclerotia and three rhizomorphs with
a target of three sclerotia, so the Raft leader L has promoted one rhizomorph D. The
partition puts L with one rhizomorph on a bridge of their own. The majority side (the
other sclerotium, D and a rhizomorph) elects a leader in a newer term and changes the
membership (it promotes its rhizomorph); L, cut off with a member it could promote and a
dynamic member it could remove, must change nothing. After healing, one leader and one
membership. Every agent logs "acting as leader in term T" when it first acts (places,
publishes, changes members) in a term; the logs must name one actor per term."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from agent.authoring.identity import sign_state
from agent.authoring.netdir import NetworkDir
from agent.lab.cluster import BRIDGE
from agent.lab.netns import ip, move_to_bridge, setup_bridge
from agent.raft.membership import raft_addr
from support.agents import (
    BACKBONE_YAML,
    GOSSIP,
    api,
    leader_view,
    post_envelope,
    primary,
    wait_for,
)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                 reason="needs root and iproute2")]

MINORITY_BRIDGE = "mycbr2"
ACTING = re.compile(r"acting as leader in term (\d+)")
# a leader's acts: membership changes (tried, even if they fail) and seed spore writes
ACTS = re.compile(r"raft: (?:add|promote|demote|remove|stop) \S+.*|seed: seed spore.*")


@pytest.fixture(scope="module")
def cluster(start_cluster, tmp_path_factory):
    c = start_cluster(5, netns=True, sclerotia=2,
                      extra_args=GOSSIP + ["--raft-remove-after", "3"])
    seed = tmp_path_factory.mktemp("seed") / "spore.json"
    _, env = sign_state(NetworkDir(c.network), BACKBONE_YAML.replace("SEED", str(seed)).encode())
    assert post_envelope(c, env, c.nodes[0].addr)[1] == 200
    return c


def views(cluster, nodes) -> dict[str, dict]:
    out = {}
    for n in nodes:
        try:
            v = primary(cluster, n.name)
        except Exception:  # noqa: BLE001 - unreachable or restarting: no view
            v = None
        if v is not None:
            out[n.name] = v
    return out


def leader_of(cluster, nodes) -> tuple[str, dict] | None:
    """(leader name, its view) when one of `nodes` says it leads with a majority."""
    v = leader_view(cluster, [n.name for n in nodes])
    if v is None or not v["quorum"]:
        return None
    return next(n.name for n in cluster.nodes if raft_addr(n.addr) == v["leader"]), v


def actors_by_term(cluster) -> dict[int, set[str]]:
    terms: dict[int, set[str]] = {}
    for n in cluster.nodes:
        for t in ACTING.findall(Path(n.log).read_text(errors="replace")):
            terms.setdefault(int(t), set()).add(n.name)
    return terms


def test_membership_change_under_partition_has_one_actor_per_term(cluster):
    by_name = {n.name: n for n in cluster.nodes}
    name, view = wait_for(lambda: (lv := leader_of(cluster, cluster.nodes))
                          and len(lv[1]["raft_members"]) == 3 and len(lv[1]["dynamic"]) == 1
                          and lv, timeout=90, what="a leader with one promoted member")
    dynamic = next(iter(view["dynamic"]))
    # every member in step (its own view: this leader, three members, a quorum) before the
    # cut: once in CI the majority side elected no leader within 60 s, partitioned moments
    # after the promotion (the cause was not kept: the logs are kept per module since)
    seated = [by_name[n] for n in ("n1", "n2", dynamic)]
    wait_for(lambda: (vs := views(cluster, seated)) and len(vs) == 3
             and all(v["quorum"] and v["leader"] == view["leader"]
                     and len(v["raft_members"]) == 3 for v in vs.values()),
             timeout=60, what="all three Raft members in step with the leader")
    other = next(n for n in ("n1", "n2") if n != name)
    spare = [n for n in ("n3", "n4", "n5") if n != dynamic]
    minority = [by_name[name], by_name[spare[0]]]
    majority = [by_name[other], by_name[dynamic], by_name[spare[1]]]
    print(f"leader {name} (term {view['term']}), promoted {dynamic}; cut off: "
          f"{[n.name for n in minority]}, majority: {[n.name for n in majority]}")
    part_at = {n.name: Path(n.log).stat().st_size for n in minority}

    setup_bridge(MINORITY_BRIDGE)
    try:
        for n in minority:
            move_to_bridge(f"veth-{n.name}", MINORITY_BRIDGE)
        new, nv = wait_for(
            lambda: (lv := leader_of(cluster, majority)) and lv[1]["term"] > view["term"]
            and raft_addr(by_name[spare[1]].addr) in lv[1]["raft_members"] and lv,
            timeout=60, what="the majority elects a leader and promotes its rhizomorph")
        print(f"majority: leader {new} in term {nv['term']}, members {nv['raft_members']}")
        # From here a newer term exists: the cut-off leader must not act any more. (Until
        # the majority elected, it may: its lease lets it act for 0.6 s after a majority
        # last answered, and it once published a seed spore in that window.)
        cut_at = {n.name: Path(n.log).stat().st_size for n in minority}
        # the cut-off leader sees its peers die, D (dynamic) long enough to be removed and
        # its companion alive to be promoted; with no majority it must do neither (read
        # from the logs: the host cannot reach the minority's bridge)
        leader_log = Path(by_name[name].log)
        wait_for(lambda: all(f"dead: {n.name}: dead" in leader_log.read_text(
            errors="replace")[part_at[name]:] for n in majority), timeout=40,
            what=f"{name} sees the majority dead")
        time.sleep(6)  # past --raft-remove-after (3 s): the moment it would act
        for n in minority:
            during = Path(n.log).read_text(errors="replace")[cut_at[n.name]:]
            assert not ACTING.search(during), f"{n.name} acted as leader while cut off"
            act = ACTS.search(during)
            assert act is None, f"{n.name} acted while cut off: {act and act[0]}"
    finally:
        for n in minority:
            move_to_bridge(f"veth-{n.name}", BRIDGE)
        ip("link", "del", MINORITY_BRIDGE, check=False)

    # healed: one leader known to all, one membership, back to the target of three
    final = wait_for(lambda: (vs := views(cluster, cluster.nodes))
                     and len(vs) >= 3
                     and len({v["leader"] for v in vs.values()}) == 1
                     and len({tuple(v["raft_members"]) for v in vs.values()}) == 1
                     and len(next(iter(vs.values()))["raft_members"]) == 3 and vs,
                     timeout=90, what="one leader and one membership of three after healing")
    print(f"after healing: {sorted(final)} agree on {next(iter(final.values()))['raft_members']}")
    terms = actors_by_term(cluster)
    print("actors by term:", {t: sorted(a) for t, a in sorted(terms.items())})
    assert terms, "no node logged acting as leader"
    assert all(len(a) == 1 for a in terms.values()), f"two actors in one term: {terms}"
    assert api(cluster, "/api/v1/state", majority[0].addr)["version"] >= 1
