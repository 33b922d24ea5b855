"""Journal crash safety around log compaction (agent/raft/journal.py), made deterministic: the
on-disk state a SIGKILL leaves between "full dump written" and "journal cut" is built by
hand, then a store is started on it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

import agent.raft.store
from agent.raft.journal import SafeFileJournal, _rewrite, align_journal
from agent.raft.store import PrimaryStore
from support.primary import SECRET, ports, wait


def _single(d: Path, addr: str) -> PrimaryStore:
    s = PrimaryStore(addr, [], SECRET, d)
    wait(lambda: s._isLeader() and s._isReady())
    return s


def _entries(path: Path) -> list:
    j = FileJournal(str(path))
    out = [j[i] for i in range(len(j))]
    j._destroy()
    return out


def _put(s: PrimaryStore, versions: range) -> None:
    for v in versions:
        assert s.put_envelope(v, f"h{v}", f"env{v}".encode(), sync=True, timeout=5)


@pytest.fixture
def killed_between_dump_and_cut(tmp_path):
    """A data dir as a kill leaves it after the dump of version 10 landed but before the
    journal was cut: the journal still starts at the beginning and holds versions 1..20."""
    d, addr = tmp_path / "n", ports(1)[0]
    s = _single(d, addr)
    _put(s, range(1, 11))
    s.destroy()
    uncut = _entries(d / "raft.journal")
    s = _single(d, addr)
    s.forceLogCompaction()
    wait(lambda: (d / "raft.dump").exists() and len(_entries(d / "raft.journal")) < 5)
    _put(s, range(11, 21))
    s.destroy()
    tail = [e for e in _entries(d / "raft.journal") if e[1] > uncut[-1][1]]
    _rewrite(d / "raft.journal", uncut + tail)
    return d, addr


def test_control_pysyncobj_alone_drops_entries_after_the_dump(killed_between_dump_and_cut,
                                                             monkeypatch, tmp_path):
    d, addr = killed_between_dump_and_cut
    monkeypatch.setattr(agent.raft.store, "align_journal", lambda *_: 0)
    s = _single(d, addr)
    try:
        assert s.version == 10, "the scenario no longer loses entries: the test means nothing"
    finally:
        s.destroy()


def test_aligned_journal_keeps_every_committed_entry(killed_between_dump_and_cut):
    d, addr = killed_between_dump_and_cut
    s = _single(d, addr)
    try:
        assert (s.version, s.envelope) == (20, b"env20")
        _put(s, range(21, 23))
    finally:
        s.destroy()
    time.sleep(0.1)
    assert align_journal(d / "raft.journal", d / "raft.dump") == 0  # already aligned


def test_align_leaves_unrelated_or_missing_files_alone(tmp_path):
    assert align_journal(tmp_path / "raft.journal", tmp_path / "raft.dump") == 0
    _rewrite(tmp_path / "raft.journal", [(b"a", 1, 1), (b"b", 2, 1)])
    (tmp_path / "raft.dump").write_bytes(b"truncated gzip")
    assert align_journal(tmp_path / "raft.journal", tmp_path / "raft.dump") == 0
    assert _entries(tmp_path / "raft.journal") == [(b"a", 1, 1), (b"b", 2, 1)]


def test_safe_journal_cut_keeps_tail_and_appends_after_it(tmp_path):
    path = tmp_path / "j"
    j = SafeFileJournal(str(path))
    for i in range(1, 11):
        j.add(f"c{i}".encode() * 50, i, 1)
    j.setCurrentTerm(3, "x")
    j.deleteEntriesTo(6)
    j.add(b"c11", 11, 2)
    assert [e[1] for e in j] == [7, 8, 9, 10, 11]
    j._destroy()
    assert [e[1] for e in _entries(path)] == [7, 8, 9, 10, 11]
    assert _entries(path)[0][0] == b"c7" * 50
    assert FileJournal(str(path)).getCurrentTerm() == 3
    assert not list(tmp_path.glob("*.new*"))
