from __future__ import annotations

from dataclasses import replace

from agent.desired.model import (
    Components,
    DesiredState,
    Endomycete,
    Endophyte,
    K3sArtifact,
    Node,
    NodeShare,
)
from agent.desired.placement import (
    LiveMember,
    live_members,
    place,
    placement_notes,
    runtime_for,
)
from agent.desired.plan import assumed_share, plan_node

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


# --- joined nodes, runtime default, what could not be placed (issue 12) ----------------

NGINX3 = DesiredState("n", endomycetes=(Endomycete("nginx", "nginx", replicas=3),))
SEEN3 = {"n1": ("sclerotium", "127.0.0.1"), "n2": ("sclerotium", "127.0.0.1"),
         "n3": ("rhizomorph", "127.0.0.1")}


def test_joined_nodes_not_in_nodes_list_are_placed_with_their_own_role():
    live = live_members(NGINX3, SEEN3)  # `nodes: []`, as `cluster up` writes it
    assert [(m.name, m.role, m.runtime) for m in live] == [
        ("n1", "sclerotium", "podman"), ("n2", "sclerotium", "podman"),
        ("n3", "rhizomorph", "podman")]
    s = place(NGINX3, live)
    assert all(s[n].endomycetes == ("nginx",) for n in SEEN3)
    assert (s["n1"].role, s["n1"].runtime, s["n1"].runtime_reason) == \
        ("sclerotium", "podman", "no components.k3s")
    assert placement_notes(NGINX3, live, s) == []


def test_a_nodes_entry_adds_labels_and_runtime_by_name_but_not_the_role():
    state = replace(NGINX3, nodes=(Node("n2", "hypha", labels={"disk": "ssd"},
                                        runtime="k3s"),))
    live = {m.name: m for m in live_members(state, SEEN3)}
    assert live["n2"] == LiveMember("n2", "sclerotium", "127.0.0.1", {"disk": "ssd"}, "k3s",
                                    "nodes: entry")
    assert live["n1"].labels == {} and live["n1"].runtime == "podman"
    # a member that reports no role takes its entry's
    assert live_members(state, {"n2": ("", "h")})[0].role == "hypha"


def test_runtime_defaults_to_k3s_only_when_components_k3s_names_a_binary():
    assert runtime_for(NGINX3, "x") == ("podman", "no components.k3s")
    with_k3s = replace(NGINX3, components=Components(K3sArtifact("/k3s", "ab" * 32)))
    assert runtime_for(with_k3s, "x") == ("k3s", "components.k3s is set")
    assert runtime_for(replace(with_k3s, nodes=(Node("x", runtime="podman"),)), "x") == \
        ("podman", "nodes: entry")
    s = place(with_k3s, live_members(with_k3s, SEEN3))
    assert s["n1"].k3s_role == "server" and s["n3"].k3s_role == "agent"
    assert placement_notes(with_k3s, live_members(with_k3s, SEEN3), s) == []


def notes(state: DesiredState, live: list[LiveMember]) -> list[str]:
    return placement_notes(state, live, place(state, live))


def test_what_cannot_be_placed_is_said_in_one_line_per_service():
    podman1 = replace(NGINX3, nodes=(Node("n2", runtime="k3s"), Node("n3", runtime="k3s")))
    assert notes(podman1, live_members(podman1, SEEN3)) == [
        "nginx: 1 of 3 replicas placed: only n1 has a container runtime"]
    alone = live_members(NGINX3, {"n1": ("sclerotium", "h")})
    assert notes(NGINX3, alone) == ["nginx: 1 of 3 replicas placed: only n1 can run it, "
                                    "one per node"]
    db = DesiredState("n", endomycetes=(Endomycete("db", "pg", labels={"disk": "ssd"}),),
                      endophytes=(Endophyte("vm", "i", backups=1, labels={"zone": "x"}),))
    assert notes(db, live_members(db, SEEN3)) == [
        "db: 0 of 1 replica placed: labels {disk: ssd} match no live node",
        "vm: 0 of 2 (primary and 1 backup) placed: labels {zone: x} match no live node"]
    assert notes(NGINX3, [H1]) == ["nginx: 0 of 3 replicas placed: no live node runs "
                                   "services (hyphae run clients only)"]
    k3s_only = replace(NGINX3, nodes=tuple(Node(n, runtime="k3s") for n in SEEN3))
    assert notes(k3s_only, live_members(k3s_only, SEEN3)) == [
        "nginx: 0 of 3 replicas placed: no live node has a container runtime (K3s nodes "
        "need components.k3s.binary and a live sclerotium)"]


def test_a_joined_node_has_a_plan():
    share = assumed_share(NGINX3, "node-abc", "rhizomorph")
    plan = plan_node(NGINX3, 1, "node-abc", share)
    assert plan.role == "rhizomorph" and "podman" in plan.components
    assert plan.containers is not None and set(plan.containers.manifests) == {"nginx"}
    assert plan.share["runtime"] == "podman"
    # a share from a placement made before shares recorded role and runtime
    old = NodeShare("n1", endomycetes=("nginx",))
    assert plan_node(NGINX3, 1, "n1", old).share["runtime_reason"] == "no components.k3s"


# --- endophytes by memory (issue 14) ---------------------------------------------------

def _vms(*specs: tuple[str, int, int]) -> DesiredState:
    return DesiredState("n", endophytes=tuple(Endophyte(n, "i", memory_mb=mb, backups=b)
                                              for n, mb, b in specs))


def _nodes(**mem: int | None) -> list[LiveMember]:
    return [LiveMember(n, "rhizomorph", memory_mb=mb) for n, mb in mem.items()]


def _hosts(s: dict[str, NodeShare], vm: str) -> list[str]:
    """The VM's primary, then its backups."""
    return ([n for n in s if vm in s[n].endophytes_primary]
            + sorted(n for n in s if vm in s[n].endophytes_backup))


MEMORY_CASES = [
    # (nodes' memory, VMs (name, MiB, backups), where each lands, notes)
    ({"a": 1024, "b": 1024}, [("db", 512, 1)], {"db": ["a", "b"]}, []),
    ({"a": 512, "b": 256}, [("db", 1024, 0)], {"db": []},
     ["db: not placed: needs 1024 MiB, largest free is 512 MiB on a"]),
    ({"a": 1024, "b": 1024}, [("x", 768, 0), ("y", 768, 0), ("z", 768, 0)],
     {"x": ["a"], "y": ["b"], "z": []},
     ["z: not placed: needs 768 MiB, largest free is 256 MiB on a"]),
    # a backup must be able to run the VM, so it needs the memory too
    ({"a": 1024, "b": 512}, [("db", 768, 1)], {"db": ["a"]},
     ["db: 1 of 2 (primary and 1 backup) placed: needs 768 MiB, largest free elsewhere "
      "is 512 MiB on b"]),
    # the load spreads VMs, memory only rules nodes out: the small node takes the small VM
    ({"a": 2048, "b": 256}, [("big", 1024, 0), ("small", 256, 0)],
     {"big": ["a"], "small": ["b"]}, []),
    # a node that does not say what it has is not limited
    ({"a": None, "b": 512}, [("db", 4096, 1)], {"db": ["a"]},
     ["db: 1 of 2 (primary and 1 backup) placed: needs 4096 MiB, largest free elsewhere "
      "is 512 MiB on b"]),
    ({"a": None}, [("x", 4096, 0), ("y", 4096, 0)], {"x": ["a"], "y": ["a"]}, []),
]


def test_endophytes_are_placed_where_their_memory_fits():
    for mem, specs, where, want_notes in MEMORY_CASES:
        state, live = _vms(*specs), _nodes(**mem)
        s = place(state, live)
        assert {vm: _hosts(s, vm) for vm in where} == where, (mem, specs)
        assert placement_notes(state, live, s) == want_notes, (mem, specs)


def test_memory_comes_from_the_nodes_entry():
    state = replace(_vms(("db", 768, 0)), nodes=(Node("n1", memory_mb=512),
                                                 Node("n3", memory_mb=1024)))
    live = {m.name: m for m in live_members(state, SEEN3)}
    assert (live["n1"].memory_mb, live["n2"].memory_mb, live["n3"].memory_mb) == \
        (512, None, 1024)
    s = place(state, list(live.values()))
    assert _hosts(s, "db") == ["n2"]  # n1 is too small; n2 and n3 fit, n2 first by name


def test_kept_vms_are_counted_before_new_ones_take_memory():
    live = _nodes(a=1024, b=1024)
    first = place(_vms(("y", 768, 0)), live)
    assert _hosts(first, "y") == ["a"]
    # w comes first in the state and would take a by name; y keeps a, w goes to b
    again = place(_vms(("w", 768, 0), ("y", 768, 0)), live, first, version=2)
    assert (_hosts(again, "y"), _hosts(again, "w")) == (["a"], ["b"])


def test_a_promoted_backup_keeps_the_memory_it_reserved():
    live = _nodes(a=1024, b=1024, c=512)
    first = place(_vms(("db", 768, 1), ("tiny", 256, 0)), live)
    assert _hosts(first, "db") == ["a", "b"] and _hosts(first, "tiny") == ["c"]
    after = place(_vms(("db", 768, 1), ("tiny", 256, 0)),
                  [m for m in live if m.name != "a"], first, version=2)
    assert _hosts(after, "db") == ["b"] and _hosts(after, "tiny") == ["c"]
    assert placement_notes(_vms(("db", 768, 1), ("tiny", 256, 0)),
                           [m for m in live if m.name != "a"], after) == [
        "db: 1 of 2 (primary and 1 backup) placed: needs 768 MiB, largest free elsewhere "
        "is 256 MiB on c"]
