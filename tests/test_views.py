"""Table tests of agent/views.py: API JSON given, the exact lines an operator sees expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.views import (
    Convergence,
    MemberRow,
    ShareRow,
    apply_lines,
    dry_run_lines,
    member_rows,
    members_table,
    plan_lines,
    progress_bar,
    share_rows,
    shares_table,
    status_frame,
    table,
)
from recipes.run import OpResult, Report

MEMBERS: list[dict[str, Any]] = [
    {"name": "n2", "role": "rhizomorph", "state": "alive", "version": 3, "pv": 2,
     "addr": "127.0.0.1:7002", "last_seen": 995.4,
     "status": {"status": "ok", "applied_version": 3}, "raft": {}},
    {"name": "n1", "role": "sclerotium", "state": "alive", "version": 3, "pv": 2,
     "addr": "127.0.0.1:7001", "last_seen": 1000.0,
     "status": {"status": "degraded", "applied_version": 2, "failed": 2},
     "raft": {"addr": "127.0.0.1:7101", "leader": True}},
    {"name": "n3", "role": "sclerotium", "state": "dead", "version": None,
     "addr": "127.0.0.1:7003", "raft": {"addr": "127.0.0.1:7103", "leader": False}},
    {"name": "n4", "state": "suspect", "last_seen": 1200.0, "status": None, "raft": None},
]

MEMBERS_TABLE = """\
NAME  ROLE        STATE    RAFT    VERSION  APPLIED  APPLY                PLACED  ADDRESS         SEEN
n1    sclerotium  alive    leader  v3       v2       degraded (2 failed)  p2      127.0.0.1:7001  1s ago
n2    rhizomorph  alive    -       v3       v3       ok                   p2      127.0.0.1:7002  6s ago
n3    sclerotium  dead     member  v0       v0       -                    p0      127.0.0.1:7003  -
n4    ?           suspect  -       v0       v0       -                    p0                      0s ago"""  # noqa: E501

SHARES: list[dict[str, Any]] = [
    {"node": "n2", "authority": "primary", "placement_version": 2,
     "share": {"k3s_role": "agent", "endomycetes": ["web", "db"],
               "endophytes_primary": [], "endophytes_backup": ["vm1"], "runtime": "k3s",
               "runtime_reason": "components.k3s is set"},
     "apply": {"status": "ok", "ckpt": {"vm1": 997.0, "junk": "x"}}},
    {"node": "n1", "error": "x" * 80},
    {"node": "n3", "authority": None, "share": None},
]

SHARES_TABLE = """\
NODE  AUTHORITY                                                            PLACED  K3S    SERVICES  VMS  BACKUPS  RUNTIME
n1    error: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
n2    primary                                                              p2      agent  web,db    -    vm1      k3s (components.k3s is set)
n3    latent                                                               p0      -      -         -    -        -"""  # noqa: E501


def test_members_table():
    assert members_table(member_rows(MEMBERS), now=1001.0) == MEMBERS_TABLE


def test_members_table_empty_is_the_header():
    assert members_table([], now=0.0) == ("NAME  ROLE  STATE  RAFT  VERSION  APPLIED  APPLY  "
                                          "PLACED  ADDRESS  SEEN")


def test_shares_table():
    assert shares_table(share_rows(SHARES)) == SHARES_TABLE


def test_shares_table_shows_each_backups_checkpoint_age():
    """Issue 15's replication lag as each backup sees it: the age of its newest checkpoint."""
    table = shares_table(share_rows(SHARES), now=1001.0)
    assert "vm1 (ckpt 4s)" in table and "junk" not in table


def test_shares_table_shows_each_primarys_buffer_throttle_and_lag():
    """Issue 15's metrics as the primary gossips them (`rep`: fill %, throttle %, wall
    second of its newest checkpoint); a malformed entry is left out."""
    row = {"node": "n4", "authority": "primary", "placement_version": 3,
           "share": {"endophytes_primary": ["tiny", "db", "old"]},
           "vms": [{"name": "tiny", "state": "running"}, {"name": "db", "state": "running"}],
           "apply": {"rep": {"tiny": [12, 30, 998], "db": [1, "x", 3], "old": [1, 2]}}}
    (share,) = share_rows([row])
    assert share.replication == (("tiny", (12, 30, 998)),)
    table = shares_table([share], now=1001.0)
    assert "tiny:running (buf 12% thr 30% lag 3s),db:running,old " in table + " ", table
    assert "(buf" not in shares_table([share])  # no clock: no lag to show


def test_status_frame_adds_shares_only_when_asked():
    members = member_rows(MEMBERS)
    assert status_frame(members, [], now=1001.0) == MEMBERS_TABLE
    assert status_frame(members, share_rows(SHARES), now=1001.0) == (
        MEMBERS_TABLE + "\n\n" + shares_table(share_rows(SHARES), now=1001.0))


@pytest.mark.parametrize("raw", [{}, {"status": "x", "raft": [], "version": "v?",
                                      "last_seen": "never", "pv": None}])
def test_member_record_tolerates_missing_and_odd_keys(raw):
    m = MemberRow.from_api(raw)
    assert (m.name, m.role, m.state, m.version, m.placement_version, m.last_seen) == (
        "?", "?", "?", 0, 0, None)
    assert (m.raft_addr, m.raft_leader, m.apply_status, m.applied_version) == ("", False, "", 0)


def test_share_record_tolerates_missing_keys():
    assert ShareRow.from_api({"node": "a"}) == ShareRow("a", authority="latent")
    assert ShareRow.from_api({"node": "a", "error": "refused"}).error == "refused"


def test_table_pads_columns_and_strips_trailing_blanks():
    assert table([("A", "BB", "C"), ("long", "", "")]) == "A     BB  C\nlong"


@pytest.mark.parametrize("done,total,line", [
    (0, 0, "[..............................] 0/0 nodes at v4"),
    (2, 3, "[####################..........] 2/3 nodes at v4"),
    (3, 3, "[##############################] 3/3 nodes at v4"),
])
def test_progress_bar(done, total, line):
    assert progress_bar(done, total, 4) == line


def test_convergence_counts_live_members_only():
    rows = member_rows(MEMBERS)
    c = Convergence.of(rows, 3)
    assert [m.name for m in c.live] == ["n2", "n1", "n4"]
    assert not c.done and c.lag() == "n4 (v0)"
    assert c.bar() == progress_bar(2, 3, 3)
    assert Convergence.of(rows[:2], 3).done
    assert not Convergence.of(rows[2:3], 0).done  # no live member: nothing has converged


@dataclass
class Plan:
    node: str = "pi1"
    role: str = "sclerotium"
    version: int = 7
    components: tuple[str, ...] = ("base", "agent")
    waiting: tuple[str, ...] = ()
    share: dict[str, Any] = field(default_factory=dict)


def test_plan_lines():
    assert plan_lines(Plan(waiting=("k3s: no binary",), share={"endomycetes": ["web", "db"]})) == [
        "node pi1 (sclerotium), state v7",
        "  components: base, agent",
        "  waiting:    k3s: no binary",
        "  services:   web, db",
    ]
    assert plan_lines(Plan()) == ["node pi1 (sclerotium), state v7", "  components: base, agent"]
    assert plan_lines(Plan(share={"endophytes_primary": ["db"],
                                  "endophytes_backup": ["mail"]}))[2:] == [
        "  vms:        db", "  vm backups: mail"]


OPS = [OpResult("base: packages", True, True, ["apt-get install -y x", "touch /y"]),
       OpResult("agent: unit", False, True),
       OpResult("k3s: install", True, False, ["curl k3s"], "boom\nline2\n")]


def test_dry_run_lines():
    report = Report("@chroot/x", True, OPS[:2], 1.25)
    assert dry_run_lines(report, "@chroot/x") == [
        "  would change: base: packages",
        "      apt-get install -y x",
        "      touch /y",
        f"@chroot/x: {report.summary()}",
    ]
    assert dry_run_lines(None, "") == [
        "  (give --target @local or @chroot/DIR to see the operations that would run)"]


def test_apply_lines():
    report = Report("@local", False, OPS, 1.25)
    assert apply_lines(report, "@local") == [
        "  changed base: packages",
        "  FAILED  k3s: install",
        "--- output of k3s: install:\nboom\nline2",
        f"@local: {report.summary()}",
    ]
    quiet = Report("@local", False, OPS[1:2], 0.5)
    assert apply_lines(quiet, "@local") == [f"@local: nothing to change ({quiet.summary()})"]


def test_vm_views_from_node_replies():
    from agent.views import ShareRow, backup_rows, vm_rows, vm_status_lines, vms_table

    replies = [{"node": "n2", "vms": [
        {"name": "db", "state": "running", "accel": "tcg", "qmp": "running",
         "uptime_s": 75.2, "restarts": 1, "cpus": 2, "memory_mb": 512,
         "ports": ["5432->5432/tcp"], "boot": "cold"},
        {"name": "bad", "state": "failed", "reason": "image /i: sha256 is 00, network.yaml "
         "says 11; not started"}]},
        {"node": "n3", "error": "timed out"}, {"node": "n4", "vms": [{"odd": 1}]}]
    rows = vm_rows(replies)
    assert [(v.name, v.node, v.state) for v in rows] == [
        ("db", "n2", "running"), ("bad", "n2", "failed"), ("?", "n4", "?")]
    table = vms_table(rows).splitlines()
    assert table[0].split() == ["NAME", "NODE", "STATE", "ACCEL", "QMP", "UPTIME", "RESTARTS",
                                "PORTS", "REASON"]
    assert table[2].split()[:8] == ["bad", "n2", "failed", "-", "-", "-", "0", "-"]
    assert table[3].split() == ["db", "n2", "running", "tcg", "running", "1m15s", "1",
                                "5432->5432/tcp", "-"]
    lines = vm_status_lines([rows[0]], "db")
    assert lines[0] == "db on n2: running" and "2 CPUs, 512 MiB" in lines[1]
    assert "boot: cold" in lines[3] and "replicated" in lines[3]
    assert "not supervised by any live node" in vm_status_lines([], "db")[0]
    replicated = [{"node": "n1", "vms": [{"name": "db", "state": "running",
                                         "boot": "resumed from checkpoint 7", "replication": {
        "seq": 9, "acked": {"127.0.0.1:7": 9}, "last": {
            "seq": 9, "full": False, "dirtied_bytes": 600 * 1024, "wire_bytes": 90 * 1024,
            "cycle_s": 0.8}}}], "backups": []},
        {"node": "n3", "vms": [], "backups": [{"vm": "db", "seq": 9, "age_s": 1.2,
                                               "refused": 1, "last_refusal": "sha256"}]}]
    lines = vm_status_lines(vm_rows(replicated), "db", backup_rows(replicated))
    assert "  boot: resumed from checkpoint 7 (its memory kept)" in lines
    assert ("  replication: checkpoint 9: dirtied 600 KiB, sent 90 KiB, cycle 0.8 s; "
            "backups took 127.0.0.1:7=9") in lines
    assert lines[-1] == "  backup on n3: checkpoint 9, 0m01s old, 1 refused (last: sha256)"
    assert not any("buffer" in x for x in lines)  # an older primary does not say
    replicated[0]["vms"][0]["replication"].update(buffer_fill=0.25, throttle=0.1, lag_s=1.6,
                                                  paused=True)
    lines = vm_status_lines(vm_rows(replicated), "db", backup_rows(replicated))
    assert ("  replication: buffer 25 % full, throttle 10 %, lag 2 s, paused by a full "
            "buffer") in lines
    replicated[0]["vms"][0]["replication"]["last"].update(disk_bytes=64 << 10, pause_s=0.024)
    assert ("  replication: checkpoint 9: dirtied 600 KiB, sent 90 KiB, disk 64 KiB, paused "
            "24 ms, cycle 0.8 s; backups took 127.0.0.1:7=9") in vm_status_lines(
        vm_rows(replicated), "db", backup_rows(replicated))
    share = ShareRow.from_api({"node": "n2", "share": {"endophytes_primary": ["db", "new"]},
                               "vms": [{"name": "db", "state": "running"},
                                       {"name": "old", "state": "stopping"}]})
    assert share.vms == ("db:running", "new", "old:stopping")
