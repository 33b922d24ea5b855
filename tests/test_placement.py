from __future__ import annotations

from agent.desired import DesiredState, Endomycete, Endophyte
from agent.placement import LiveMember, place

S1 = LiveMember("s1", "sclerotium", "10.0.0.1")
R1 = LiveMember("r1", "rhizomorph", labels={"disk": "ssd"}, runtime="podman")
R2 = LiveMember("r2", "rhizomorph", labels={"disk": "ssd"}, runtime="podman")
R3 = LiveMember("r3", "rhizomorph", runtime="podman")
H1 = LiveMember("h1", "hypha")


def test_k3s_roles():
    s = place(DesiredState("n"), [S1, LiveMember("a", "rhizomorph"), H1])
    assert s["s1"].k3s_role == "server" and s["a"].k3s_role == "agent"
    assert s["a"].k3s_server_url == "https://10.0.0.1:6443" and s["h1"].k3s_role is None


def test_replicas_spread_with_anti_affinity_and_labels():
    state = DesiredState("n", endomycetes=(Endomycete("web", "img", replicas=5),
                                           Endomycete("db", "img", 2, labels={"disk": "ssd"})))
    s = place(state, [S1, R1, R2, R3, H1])
    assert sorted(n for n in s if "web" in s[n].endomycetes) == ["r1", "r2", "r3"]
    assert sorted(n for n in s if "db" in s[n].endomycetes) == ["r1", "r2"]
    assert all(len(set(x.endomycetes)) == len(x.endomycetes) for x in s.values())


def test_endophyte_primary_and_backups_on_distinct_nodes():
    state = DesiredState("n", endophytes=(Endophyte("vm", "i", backups=2),))
    s = place(state, [S1, R1, R2, R3, H1])
    hosts = [n for n in s if "vm" in s[n].endophytes_primary + s[n].endophytes_backup]
    assert len(hosts) == 3 and len(set(hosts)) == 3 and "h1" not in hosts


def test_stable_and_backup_promoted_when_primary_dies():
    state = DesiredState("n", endophytes=(Endophyte("vm", "i", backups=1),),
                         endomycetes=(Endomycete("web", "img", replicas=2),))
    first = place(state, [S1, R1, R2, R3])
    primary = next(n for n in first if first[n].endophytes_primary)
    backup = next(n for n in first if first[n].endophytes_backup)
    web = sorted(n for n in first if first[n].endomycetes)
    again = place(state, [S1, R1, R2, R3], first)
    assert again == {k: v for k, v in first.items()}  # nothing moves without a reason
    live = [m for m in (S1, R1, R2, R3) if m.name != primary]
    after = place(state, live, first, version=2)
    assert after[backup].endophytes_primary == ("vm",)
    moved = sorted(n for n in after if after[n].endomycetes)
    assert len(moved) == 2 and set(web) - {primary} <= set(moved)
